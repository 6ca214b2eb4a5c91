#!/usr/bin/env bash
# Browser tests of the sale page and the admin dashboard (web/tests/):
# playwright-core (npm, locked) driving Debian's Chromium against the real
# binary, embedded default, on a random port. Part of scripts/test.sh.
#
#   ./scripts/browser-tests.sh [--screenshots]
#
# --screenshots writes the README's screenshots (docs/screenshots/); without
# it they go to target/screenshots/.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-target}"
SHOTS="$TARGET/screenshots"
[ "${1:-}" = "--screenshots" ] && SHOTS=docs/screenshots

./scripts/debian-package.sh chromium /usr/bin/chromium
./scripts/web.sh check
cargo build --locked --quiet --bin flashsale
FLASHSALE_BIN="$TARGET/debug/flashsale" SCREENSHOT_DIR="$SHOTS" \
    node --test --test-concurrency=1 web/tests/
