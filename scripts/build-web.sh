#!/usr/bin/env bash
# Build the chat page served by `quire serve` at `/`: inline server/web/ (HTML, CSS, JS) and the pinned
# libraries in server/web/vendor/ into ONE self-contained file, server/static/index.html, which the server
# embeds with include_str!. The output is committed, so building the Rust crates never needs Node.js.
#
#   scripts/build-web.sh                  rebuild server/static/index.html (needs node, no network)
#   scripts/build-web.sh --check          fail if server/static/index.html is not what the sources give
#   scripts/build-web.sh --update-vendor  re-fetch the libraries pinned in server/web/package.json from the
#                                         npm registry (npm ci), copy their minified files and licences into
#                                         server/web/vendor/, then rebuild
set -euo pipefail
cd "$(dirname "$0")/.."
WEB=server/web
command -v node >/dev/null || { echo "build-web.sh: node is required (apt-get install nodejs)" >&2; exit 1; }

case "${1:-}" in
  --update-vendor)
    command -v npm >/dev/null || { echo "build-web.sh: npm is required" >&2; exit 1; }
    (cd "$WEB" && npm ci --no-audit --no-fund)
    V="$WEB/vendor"
    NM="$WEB/node_modules"
    rm -rf "$V" && mkdir -p "$V/highlight/languages"
    cp "$NM/marked/lib/marked.umd.js" "$V/marked.umd.js"
    cp "$NM/marked/LICENSE" "$V/marked.LICENSE"
    cp "$NM/dompurify/dist/purify.min.js" "$V/purify.min.js"
    cp "$NM/dompurify/LICENSE" "$V/dompurify.LICENSE"
    cp "$NM/dompurify/LICENSE-MPL" "$V/dompurify.LICENSE-MPL"
    cp "$NM/@highlightjs/cdn-assets/highlight.min.js" "$V/highlight/highlight.min.js"
    cp "$NM/@highlightjs/cdn-assets/LICENSE" "$V/highlight/LICENSE"
    # Beyond highlight.min.js's common set: what the seed's users paste most often besides.
    for l in dockerfile nginx powershell; do
      cp "$NM/@highlightjs/cdn-assets/languages/$l.min.js" "$V/highlight/languages/"
    done
    node "$WEB/build.mjs" --write-versions
    ;;
  --check|"") ;;
  *) echo "usage: $0 [--check | --update-vendor]" >&2; exit 2 ;;
esac

if [ "${1:-}" = "--check" ]; then
  node "$WEB/build.mjs" --check
else
  node "$WEB/build.mjs"
fi
