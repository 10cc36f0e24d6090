// Saved ipywidgets without a network (loaded before require.js and the html-manager, see website/conf.py).
(function () {
  // The html-manager loads its icon fonts from this folder instead of a CDN.
  var here = document.currentScript.src.replace(/[^/]*$/, "");
  window.__jupyter_widgets_assets_path__ = here + "vendor/html-manager/";
  // The bundle's libembed-amd module takes its asset folder from its own AMD module URI, which require.js resolves
  // against the page ("notebooks/@jupyter-widgets/html-manager/dist/"): the fonts were not there (ERR_FILE_NOT_FOUND).
  // A config object in window.require before require.js loads is require.js's documented way to map that name.
  var amd = { paths: { "@jupyter-widgets/html-manager/dist": here + "vendor/html-manager" } };
  if (typeof window.require === "function" && window.require.config) window.require.config(amd);
  else window.require = amd;
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
