#!/usr/bin/env bash
# Fetch the two scripts that show saved ipywidgets on the website, from the npm registry, into
# website/_static/vendor/ (ignored by git), so that the built pages never load them from a CDN:
#   @jupyter-widgets/html-manager (BSD-3-Clause; renders ipywidgets 8 state) and requirejs (MIT; loads it).
# Runs once: a second call with the same versions does nothing. Needs npm (Node.js).
set -euo pipefail
HTML_MANAGER=@jupyter-widgets/html-manager@1.0.15
REQUIREJS=requirejs@2.3.8

cd "$(dirname "$0")/.."
dest=website/_static/vendor
stamp="$dest/.fetched-$(echo "$HTML_MANAGER $REQUIREJS" | tr '/@ ' '_-_')"
[ -f "$stamp" ] && exit 0
command -v npm >/dev/null || { echo "error: npm is needed to fetch the widget scripts (apt-get install npm)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$HTML_MANAGER" "$REQUIREJS" >/dev/null)
rm -rf "$dest" && mkdir -p "$dest/html-manager"
mkdir "$tmp/hm" "$tmp/rq"
tar xzf "$tmp"/jupyter-widgets-html-manager-*.tgz -C "$tmp/hm"
tar xzf "$tmp"/requirejs-*.tgz -C "$tmp/rq"
# embed-amd.js and the icon fonts it loads (next to it); not the source maps nor the non-AMD bundles.
find "$tmp/hm/package/dist" -maxdepth 1 -type f \
    \( -name 'embed-amd.js' -o -name '*.woff*' -o -name '*.ttf' -o -name '*.eot' -o -name '*.svg' -o -name '*LICENSE*' \) \
    -exec cp {} "$dest/html-manager/" \;
cp "$tmp/hm/package/package.json" "$dest/html-manager/package.json"
cp "$tmp/rq/package/require.js" "$dest/require.js"
printf '%s\n' "Fetched by scripts/fetch_site_js.sh from the npm registry:" \
    "  $HTML_MANAGER (BSD-3-Clause, https://github.com/jupyter-widgets/ipywidgets)" \
    "  $REQUIREJS (MIT, https://github.com/requirejs/requirejs)" > "$dest/README.txt"
touch "$stamp"
echo "widget scripts: $HTML_MANAGER, $REQUIREJS -> $dest"
