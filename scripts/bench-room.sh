#!/usr/bin/env bash
# The waiting room at scale: WAITERS buyers waiting at once on one node over
# server-sent events (from loopback addresses 127.0.0.2…), STOCK units,
# the room letting RATE buyers in per second; every admitted buyer buys at
# once. Prints flashsale bench's JSON report (admission rate and order, the
# sold-out broadcast, the server's peak memory).
#
#   WAITERS=19000 STOCK=6000 RATE=1000 ./scripts/bench-room.sh
#
# Each stream is one descriptor on each side: the open-file limit of the
# server and of the load tool bounds WAITERS (both are raised to the hard
# limit here; `ulimit -Hn` says what this machine allows).
set -euo pipefail
cd "$(dirname "$0")/.."
WAITERS="${WAITERS:-19000}"
STOCK="${STOCK:-6000}"
RATE="${RATE:-1000}"
BIN="${CARGO_TARGET_DIR:-target}/release"
ulimit -n "$(ulimit -Hn)"
export FLASHSALE_ADMIN_TOKEN=bench-admin FLASHSALE_JWT_SECRET=bench-secret
cargo build --release --quiet --workspace
WORK=$(mktemp -d)
PORT="${PORT:-18391}"
URL="http://127.0.0.1:$PORT"
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
"$BIN/flashsale" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
    --max-connections $((WAITERS + 1000)) --idle-timeout-ms 600000 >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.1; done
echo "server pid $PID, open-file limit $(ulimit -n)" >&2
"$BIN/flashsale-bench" --mode room --url "$URL" --users "$WAITERS" --stock "$STOCK" \
    --room-rate "$RATE" --server-pid "$PID" --starts-in-ms "${STARTS_IN_MS:-20000}" --timeout 30s
