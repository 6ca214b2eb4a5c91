#!/usr/bin/env bash
# A flood ten times what the node serves: the node admits MAX_IN_FLIGHT
# requests at once (`--max-in-flight`) and CONNS connections send
# purchases as fast as they are answered, while two probes open a fresh
# connection to `/healthz` every 100 ms (as a kubelet does): one on the main
# port, one on the operations port (`--ops-listen`). Prints flashsale
# bench's JSON report: outcomes with their latency (sheds are `503
# overloaded`), each probe's latency, and the invariant checks of every
# accepted order.
#
#   CONNS=2000 MAX_IN_FLIGHT=200 SECS=15 ./scripts/bench-flood.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS="${CONNS:-2000}"
MAX_IN_FLIGHT="${MAX_IN_FLIGHT:-200}"
SECS="${SECS:-15}"
USERS="${USERS:-300000}"
BIN="${CARGO_TARGET_DIR:-target}/release"
ulimit -n "$(ulimit -Hn)"
export FLASHSALE_ADMIN_TOKEN=bench-admin FLASHSALE_JWT_SECRET=bench-secret
cargo build --release --quiet --workspace
WORK=$(mktemp -d)
PORT="${PORT:-18392}"
URL="http://127.0.0.1:$PORT"
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
"$BIN/flashsale" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" \
    --ops-listen "127.0.0.1:$((PORT + 1))" --max-in-flight "$MAX_IN_FLIGHT" >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.1; done
echo "server pid $PID, open-file limit $(ulimit -n), $CONNS connections, max in flight $MAX_IN_FLIGHT" >&2
# What a buy button sends (`{"quantity":1}`, JSON). Stock for every buyer:
# the whole flood is on the accept path (each
# purchase waits for its group commit), the node's most expensive request.
"$BIN/flashsale-bench" --mode purchase --url "$URL" --concurrency "$CONNS" \
    --users "$USERS" --stock "$USERS" --per-user-limit 1 --duration "${SECS}s" --shape json \
    --probe /healthz --probe "http://127.0.0.1:$((PORT + 1))/healthz" --probe-every 100ms --verify-sample 5000 --timeout 30s --json
