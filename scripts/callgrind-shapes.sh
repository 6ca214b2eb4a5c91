#!/usr/bin/env bash
# Instructions per request, by request shape, counted by callgrind (which
# counts instructions, not time: repeatable whatever else the machine does).
# The release server runs under `valgrind --tool=callgrind`; for each phase
# the counters are zeroed, `wrk -t1 -c8` sends that shape for $SECS seconds,
# and the counters are dumped: instructions / requests answered, the server's
# background work included. Shapes: GET /healthz, then the sold-out purchase
# with no body, with {"quantity":1} and its content type, with a fresh
# Idempotency-Key per request, with a replayed key (scripts/wrk/shapes.lua).
#
#   ./scripts/callgrind-shapes.sh [seconds per phase, default 8]
#   KEEP=dir ./scripts/callgrind-shapes.sh   # also keeps each phase's profile
#                                            # as dir/<shape>.callgrind (callgrind_annotate)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-8}"
BIN="$(realpath -m "${CARGO_TARGET_DIR:-target}")/release/flashsale"
./scripts/debian-package.sh wrk wrk
./scripts/debian-package.sh valgrind valgrind
export FLASHSALE_ADMIN_TOKEN=bench-admin FLASHSALE_JWT_SECRET=bench-secret
cargo build --release --quiet
WORK=$(mktemp -d)
PORT="${PORT:-18395}"
URL="http://127.0.0.1:$PORT"
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

(cd "$WORK" && exec valgrind --tool=callgrind --dump-instr=no --collect-atstart=yes \
    --callgrind-out-file="$WORK/cg.out" \
    "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data") >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 600); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.2; done
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
SALE=$(curl -sf -XPOST "$URL/api/v1/sales" -H "Authorization: Bearer $FLASHSALE_ADMIN_TOKEN" \
    -H 'Content-Type: application/json' \
    -d '{"item":"shapes","stock":1,"starts_at":"2020-01-01T00:00:00Z"}' | field 'd["id"]')
"$BIN" token --user cg --count 2000 >"$WORK/tokens"
curl -sf -o /dev/null -XPOST "$URL/api/v1/sales/$SALE/purchase" \
    -H "Authorization: Bearer $(sed -n 1p "$WORK/tokens")"
export TOKENS="$WORK/tokens" SALE_ID="$SALE"

phase() { # shape → requests answered
    local shape=$1 out="$WORK/wrk.out"
    if [ "$shape" = healthz ]; then
        wrk -t1 -c8 -d"${SECS}s" "$URL/healthz" >"$out"
    else
        SHAPE=$shape NONCE="$RANDOM$RANDOM-$shape" \
            wrk -t1 -c8 -d"${SECS}s" -s scripts/wrk/shapes.lua "$URL" >"$out"
    fi
    awk '/requests in/ {print $1}' "$out"
}
instructions() { # the newest dump's total
    local f
    f=$(ls -t "$WORK"/cg.out.* | head -1)
    awk '/^(summary|totals):/ {print $2; exit}' "$f"
}
# A warm-up of every shape (token cache, replayed keys recorded), not counted.
for shape in healthz nobody json fresh replay; do SECS=2 phase $shape >/dev/null; done
printf '%-12s %10s %14s %12s\n' shape requests instructions "per request"
for shape in healthz nobody json fresh replay; do
    callgrind_control -z "$PID" >/dev/null 2>&1
    n=$(phase "$shape")
    callgrind_control -d "$PID" >/dev/null 2>&1
    sleep 1
    ir=$(instructions)
    if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP"; cp "$(ls -t "$WORK"/cg.out.* | head -1)" "$KEEP/$shape.callgrind"; fi
    printf '%-12s %10s %14s %12.0f\n' "$shape" "$n" "$ir" "$(awk -v a="$ir" -v b="$n" 'BEGIN {print a / b}')"
done
