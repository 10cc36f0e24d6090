// Saved ipywidgets without a network (loaded before require.js and the html-manager, see website/conf.py).
(function () {
  // The html-manager loads its icon fonts from this folder instead of a CDN.
  var here = document.currentScript.src.replace(/[^/]*$/, "");
  window.__jupyter_widgets_assets_path__ = here + "vendor/html-manager/";
  // ipywidgets 8 typesets labels with MathJax 2's MathJax.Hub.Queue; the site ships MathJax 3.
  function standIn() {
    if (window.MathJax && !window.MathJax.Hub) {
      window.MathJax.Hub = {
        Queue: function (job) {
          var el = Array.isArray(job) ? job[2] : undefined;
          if (window.MathJax.typesetPromise) window.MathJax.typesetPromise(el ? [el] : undefined);
        },
      };
    }
  }
  standIn();
  document.addEventListener("DOMContentLoaded", standIn);
  window.addEventListener("load", standIn);
})();
