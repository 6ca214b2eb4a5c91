#!/usr/bin/env bash
# The pages' npm dependencies (web/package.json, pinned by web/package-lock.json).
#
#   ./scripts/web.sh install   npm ci in web/ (uPlot, playwright-core)
#   ./scripts/web.sh check     install, then fail unless web/vendor/ holds exactly
#                              the uPlot files the lockfile installs
#   ./scripts/web.sh vendor    install, then copy those files into web/vendor/
#
# The binary embeds web/vendor/ (src/http/pages.rs), so building and serving
# the pages needs no Node; this script is how the committed copy stays the
# locked release.
set -euo pipefail
cd "$(dirname "$0")/.."
VENDORED=(uPlot.iife.min.js uPlot.min.css)

./scripts/debian-package.sh nodejs node
./scripts/debian-package.sh npm npm
npm ci --prefix web --no-audit --no-fund --loglevel=error >/dev/null

case "${1:-install}" in
install) ;;
check)
    for f in "${VENDORED[@]}"; do
        if ! cmp -s "web/node_modules/uplot/dist/$f" "web/vendor/$f"; then
            echo "web.sh: web/vendor/$f differs from the locked uplot's (run ./scripts/web.sh vendor)" >&2
            exit 1
        fi
    done
    echo "web.sh: web/vendor/ matches web/package-lock.json"
    ;;
vendor)
    for f in "${VENDORED[@]}"; do cp "web/node_modules/uplot/dist/$f" "web/vendor/$f"; done
    cp web/node_modules/uplot/LICENSE web/vendor/uPlot.LICENSE
    echo "web.sh: copied ${VENDORED[*]} into web/vendor/"
    ;;
*)
    echo "usage: $0 install|check|vendor" >&2
    exit 2
    ;;
esac
