#!/usr/bin/env bash
# Side-by-side benchmark of the embedded default on this machine, in one run,
# so the ratios hold even when the machine is noisy. Prints a table that
# docs/BENCHMARKS.md records.
#
#   ./scripts/bench.sh [seconds per flood, default 10]
#
# Runs, against fresh servers built with `cargo build --release` (the server
# and the load tool, crates/flashsale-bench):
#   1. GET /healthz flood                         (flashsale bench --mode healthz, and wrk)
#   2. sold-out purchase flood, 5,000 buyers, each request shape a client
#      sends: no body, {"quantity":1} with its content type, a fresh
#      Idempotency-Key per request, a buyer's key replayed
#                                                 (flashsale bench --shape, and wrk: scripts/bench-shapes.sh)
#      (1 and 2 alternate $ROUNDS times, default 3, each round starting one
#      flood further along; medians are compared, with the server's CPU per
#      request from /proc beside the rates)
#   3. accept path, group commit                  (stock = buyers = 100,000)
#   4. accept path, one commit per order          (--commit-batch 1, 10,000 orders)
#   5. the classic design on PostgreSQL           (flashsale bench --mode pg-row-lock)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
CONC="${CONC:-64}"
# `flashsale bench` runs the load tool `flashsale-bench` next to the server
# binary; `cargo build --release` at the root builds both.
BIN="${CARGO_TARGET_DIR:-target}/release/flashsale"
export FLASHSALE_ADMIN_TOKEN=bench-admin FLASHSALE_JWT_SECRET=bench-secret
cargo build --release --quiet
WORK=$(mktemp -d)
PORT=18300
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

start() { # name extra-args...
    local name=$1; shift
    PORT=$((PORT + 1))
    "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/$name" "$@" \
        >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
    URL="http://127.0.0.1:$PORT"
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
run_bench() { "$BIN" bench --url "$URL" --json "$@" 2>/dev/null; }

echo "machine: $(nproc) cores, $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
start main
MAIN_URL=$URL
MAIN_PID=${PIDS[-1]}
# healthz and the sold-out flood alternate ROUNDS times; the medians are
# compared, which keeps a burst of noise from deciding the ratio.
HS=(); SS=(); SJ=(); SK=(); SR=(); AS=()
sold_out() { run_bench --stock 100 --users 5000 --concurrency "$CONC" --duration "${SECS}s" "$@"; }
# Each round starts one step further along the list of floods, so no
# flood always runs first after the accept flood (which leaves the disk and
# the caches busy) or always last.
FLOODS=(healthz bare json keyed replayed)
flood() { # name: one flood, its JSON summary appended to its array
    local cpu=(--server-pid "$MAIN_PID")
    case $1 in
        healthz) HS+=("$(run_bench --mode healthz --concurrency "$CONC" --duration "${SECS}s" "${cpu[@]}")") ;;
        bare) SS+=("$(sold_out --shape bare "${cpu[@]}")") ;;
        json) SJ+=("$(sold_out --shape json "${cpu[@]}")") ;;
        keyed) SK+=("$(sold_out --shape keyed "${cpu[@]}")") ;;
        replayed) SR+=("$(sold_out --shape replayed "${cpu[@]}")") ;;
    esac
}
for round in $(seq 0 $((${ROUNDS:-3} - 1))); do
    for i in 0 1 2 3 4; do flood "${FLOODS[$(((i + round) % 5))]}"; done
    AS+=("$(run_bench --stock 100000 --users 100000 --concurrency "$CONC" --requests 100000 --verify-sample 5000)")
done
median_run() { # picks the run with the median throughput from JSON lines on stdin
    python3 -c '
import json, sys
runs = [json.loads(l) for l in sys.stdin if l.strip()]
runs.sort(key=lambda d: d["accepted_per_sec"] if d["accepted"] > 1000 else d["throughput_rps"])
print(json.dumps(runs[len(runs) // 2]))'
}
H=$(printf '%s\n' "${HS[@]}" | median_run)
S=$(printf '%s\n' "${SS[@]}" | median_run)
SJM=$(printf '%s\n' "${SJ[@]}" | median_run)
SKM=$(printf '%s\n' "${SK[@]}" | median_run)
SRM=$(printf '%s\n' "${SR[@]}" | median_run)
echo "healthz rounds:  $(printf '%s\n' "${HS[@]}" | python3 -c 'import json,sys; print(" ".join(str(round(json.loads(l)["throughput_rps"])) for l in sys.stdin if l.strip()))')"
rounds() { python3 -c 'import json,sys; print(" ".join(str(round(json.loads(l)["throughput_rps"])) for l in sys.stdin if l.strip()))'; }
echo "sold-out rounds, no body:    $(printf '%s\n' "${SS[@]}" | rounds)"
echo "sold-out rounds, JSON body:  $(printf '%s\n' "${SJ[@]}" | rounds)"
echo "sold-out rounds, fresh key:  $(printf '%s\n' "${SK[@]}" | rounds)"
echo "sold-out rounds, replayed:   $(printf '%s\n' "${SR[@]}" | rounds)"
# The server's own CPU per request (user + system, from /proc) for each
# flood: what the server pays, whatever the load tool beside it pays.
cpu_median() { python3 -c '
import json, statistics, sys
print(round(statistics.median(json.loads(l)["server_cpu_us_per_request"] for l in sys.stdin if l.strip()), 2))'; }
HC=$(printf '%s\n' "${HS[@]}" | cpu_median)
echo "server CPU per request, median (us): healthz $HC, no body $(printf '%s\n' "${SS[@]}" | cpu_median)," \
    "JSON body $(printf '%s\n' "${SJ[@]}" | cpu_median), fresh key $(printf '%s\n' "${SK[@]}" | cpu_median)," \
    "replayed $(printf '%s\n' "${SR[@]}" | cpu_median)"
A=$(printf '%s\n' "${AS[@]}" | median_run)
echo "accept rounds:   $(printf '%s\n' "${AS[@]}" | python3 -c 'import json,sys; print(" ".join(str(round(json.loads(l)["accepted_per_sec"])) for l in sys.stdin if l.strip()))')"
start per-order --commit-batch 1
P=$(run_bench --stock 10000 --users 10000 --concurrency "$CONC" --requests 10000 --verify-sample 1000)
# The classic design, straight on PostgreSQL (no Flashsale): a row lock on
# the stock row plus an order insert per purchase.
G=$("$BIN" bench --mode pg-row-lock --json --stock 20000 --users 20000 --concurrency "$CONC" --requests 20000 2>/dev/null || echo '{}')

h=$(echo "$H" | field 'd["throughput_rps"]')
s=$(echo "$S" | field 'd["throughput_rps"]')
a=$(echo "$A" | field 'd["accepted_per_sec"]')
p=$(echo "$P" | field 'd["accepted_per_sec"]')
printf '\n%-44s %12s %10s %10s %s\n' "run (flashsale bench, $CONC connections)" "rate /s" "p50 ms" "p99 ms" "invariants"
for pair in "healthz:$H" "sold-out flood, no body:$S" "sold-out flood, JSON body:$SJM" "sold-out flood, fresh Idempotency-Key:$SKM" "sold-out flood, replayed Idempotency-Key:$SRM" "accept path, group commit:$A" "accept path, commit per order:$P" "accept, PostgreSQL row lock (pg-row-lock):$G"; do
    name=${pair%%:*}; json=${pair#*:}
    printf '%-44s %12s %10s %10s %s\n' "$name" \
        "$(echo "$json" | field 'round(d["accepted_per_sec"] if "accept" in "'"$name"'" else d["throughput_rps"])')" \
        "$(echo "$json" | field 'd["latency_ms"]["p50"]')" \
        "$(echo "$json" | field 'd["latency_ms"]["p99"]')" \
        "$(echo "$json" | field '"ok" if d["ok"] else "BROKEN"')"
done
g=$(echo "$G" | field 'd.get("accepted_per_sec", 0)')
sj=$(echo "$SJM" | field 'd["throughput_rps"]')
sk=$(echo "$SKM" | field 'd["throughput_rps"]')
sr=$(echo "$SRM" | field 'd["throughput_rps"]')
python3 - "$h" "$s" "$a" "$p" "$g" "$sj" "$sk" "$sr" <<'PY'
import sys
h, s, a, p, g, sj, sk, sr = map(float, sys.argv[1:])
print(f"\nsold-out flood / healthz, no body          = {s / h:6.1%}   (target >= 90%)")
print(f"sold-out flood / healthz, JSON body        = {sj / h:6.1%}   (target >= 90%)")
print(f"sold-out flood / healthz, fresh key        = {sk / h:6.1%}   (target >= 90%)")
print(f"sold-out flood / healthz, replayed key     = {sr / h:6.1%}")
print(f"accepted orders/s / sold-out rate          = {a / s:6.1%}   (target >= 50%)")
print(f"group commit / commit per order            = {a / p:6.1f}x  (target >= 20x)")
if g:
    print(f"group commit / pg-row-lock                 = {a / g:6.1f}x")
PY

if command -v wrk >/dev/null; then
    URL=$MAIN_URL
    SALE=$(curl -s -XPOST "$URL/api/v1/sales" -H "Authorization: Bearer $FLASHSALE_ADMIN_TOKEN" \
        -d '{"item":"wrk","stock":1,"starts_at":"2020-01-01T00:00:00Z"}' | field 'd["id"]')
    "$BIN" token --user wrk --count 10000 >"$WORK/tokens"
    wrk_run() { # label, wrk args...; prints "label rate p99"
        local label=$1; shift
        wrk -t1 -c"$CONC" -d"${SECS}s" --latency "$@" >"$WORK/wrk.out"
        printf '%-44s %12s %10s\n' "$label" \
            "$(awk '/Requests\/sec/ {printf "%d", $2}' "$WORK/wrk.out")" \
            "$(awk '$1 == "99%" {print $2}' "$WORK/wrk.out")"
    }
    echo
    printf '%-44s %12s %10s\n' "run (wrk -t1 -c$CONC -d${SECS}s, same server)" "rate /s" "p99"
    wrk_run "healthz" "$URL/healthz" | tee "$WORK/w1"
    TOKEN=$(sed -n 1p "$WORK/tokens") SALE_ID="$SALE" \
        wrk_run "sold-out flood, one buyer (static request)" -s scripts/wrk/purchase-static.lua "$URL" | tee "$WORK/w2"
    TOKENS="$WORK/tokens" SALE_ID="$SALE" \
        wrk_run "sold-out flood, 10,000 buyers (Lua)" -s scripts/wrk/purchase.lua "$URL" | tee "$WORK/w3"
    python3 - "$(awk '{print $(NF-1)}' "$WORK/w1")" "$(awk '{print $(NF-1)}' "$WORK/w2")" "$(awk '{print $(NF-1)}' "$WORK/w3")" <<'PY'
import sys
h, s1, s2 = map(float, sys.argv[1:])
print(f"\nwrk: sold-out (static) / healthz = {s1 / h:6.1%}; sold-out (10,000 buyers, Lua) / healthz = {s2 / h:6.1%}")
PY
fi
