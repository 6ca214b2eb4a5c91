#!/usr/bin/env bash
# The whole performance report in one command, on this machine: runs every
# benchmark of docs/BENCHMARKS.md one after another, appends each run's JSON
# summary (`flashsale bench --json`) to a results file, then writes the
# generated section at the top of docs/BENCHMARKS.md (between
# <!-- report:begin --> and <!-- report:end -->; the history below stays) and
# the PNG plots in docs/plots/ (`flashsale-bench-report render`).
#
#   ./scripts/bench-report.sh            # the full report, about 10 minutes
#   QUICK=1 ./scripts/bench-report.sh    # 1 s floods: a smoke test, about a minute
#
# What runs (servers built with `cargo build --release`, fresh data dirs):
#   sweep, at each of CONCS connections (default 16 64 256 1024), SECS each:
#     GET /healthz (the ceiling) and the sold-out purchase on the embedded
#     server; the embedded accept path (fsync'd 201s); the distributed accept
#     path over HTTP (Redis + RabbitMQ confirm + PostgreSQL writer); the
#     classic reference server over HTTP (flashsale-classic: one EVALSHA and
#     one confirmed publish per purchase, the fair peer of the distributed
#     path), both with their server's CPU per accepted order (--server-pid);
#     the baselines pg-row-lock and redis-evalsha, and redis-coalesced
#     (Flashsale's distributed step on the same loop, no HTTP);
#   shapes: the sold-out flood in every request shape (no body, JSON body,
#     fresh Idempotency-Key, replayed key) against GET /healthz, 64
#     connections, ROUNDS rounds alternating, SHAPE_SECS each;
#   commit: group commit vs --commit-batch 1 (ACCEPT and PER_ORDER orders);
#   nodes: three distributed nodes at once vs one (sold-out flood on one
#     sale, and the accept path with a sale per node), SECS each.
#
# Environment: QUICK, SECS, SHAPE_SECS, ROUNDS, CONCS, ACCEPT, PER_ORDER
# override the durations and sizes; RESULTS (the results file, kept for
# `flashsale-bench-report render --results …` to redraw without rerunning),
# DOC and PLOTS redirect the output. Needs PostgreSQL, Redis and RabbitMQ on
# loopback (scripts/services.sh check); never run two benchmarks at once.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK="${QUICK:-0}"
if [ "$QUICK" = 1 ]; then
    SECS="${SECS:-1}" SHAPE_SECS="${SHAPE_SECS:-1}" ROUNDS="${ROUNDS:-1}"
    CONCS="${CONCS:-16 64}" ACCEPT="${ACCEPT:-20000}" PER_ORDER="${PER_ORDER:-1000}"
else
    SECS="${SECS:-10}" SHAPE_SECS="${SHAPE_SECS:-8}" ROUNDS="${ROUNDS:-3}"
    CONCS="${CONCS:-16 64 256 1024}" ACCEPT="${ACCEPT:-100000}" PER_ORDER="${PER_ORDER:-10000}"
fi
TARGET="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET/release"
RESULTS="${RESULTS:-$TARGET/bench-report/results.jsonl}"
DOC="${DOC:-docs/BENCHMARKS.md}"
PLOTS="${PLOTS:-docs/plots}"
COMMAND="./scripts/bench-report.sh"
[ "$QUICK" = 1 ] && COMMAND="QUICK=1 $COMMAND"
export FLASHSALE_ADMIN_TOKEN=bench-admin FLASHSALE_JWT_SECRET=bench-secret
ulimit -n "$(ulimit -Hn)"
./scripts/services.sh check postgres redis rabbitmq
./scripts/debian-package.sh fonts-dejavu-core /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
cargo build --release --quiet --workspace
mkdir -p "$(dirname "$RESULTS")"
STARTED=$(date +%s)

RUN=$(printf '%08x' $((RANDOM * 32768 + RANDOM)))
SCHEMA="fs_bench_report_$RUN"
NS="fsreport$RUN"
DB="postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3D$SCHEMA"
psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE SCHEMA $SCHEMA"
WORK=$(mktemp -d)
PORT="${PORT:-18500}"
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" || true
    redis-cli --scan --pattern "$NS:*" | xargs -r redis-cli del >/dev/null || true
    rabbitmqctl delete_queue "$NS.orders" >/dev/null 2>&1 || true
    rabbitmqctl delete_queue "$NS.orders.dlq" >/dev/null 2>&1 || true
    # The classic server deletes its own keys and queue when stopped; this is
    # for one that was killed harder.
    redis-cli --scan --pattern "${NS}classic:*" | xargs -r redis-cli del >/dev/null || true
    rabbitmqctl delete_queue "${NS}classic.orders" >/dev/null 2>&1 || true
    rabbitmqctl delete_queue "${NS}classic.orders.dlq" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

start() { # name ready-path extra-args... → URL
    local name=$1 ready=$2
    shift 2
    PORT=$((PORT + 1))
    "$BIN/flashsale" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/$name" "$@" \
        >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$PORT$ready" >/dev/null && break; sleep 0.1; done
    curl -sf "http://127.0.0.1:$PORT$ready" >/dev/null || { echo "$name did not start" >&2; cat "$WORK/$name.log" >&2; exit 1; }
    URL="http://127.0.0.1:$PORT"
}
distributed() { # name → URL
    start "$1" /readyz --user-rate 0 --database "$DB" --redis redis://127.0.0.1:6379 \
        --queue 'amqp://guest:guest@127.0.0.1:5672/%2f' --namespace "$NS"
}

# bench GROUP SERIES MEASURE ROUND ARGS…: one run of the load tool, its
# summary appended to the results (or to $OUT, for runs side by side). A run
# whose invariants broke is recorded (the report marks it); a run that
# produced no summary is counted.
FAILED=0
bench() {
    local group=$1 series=$2 measure=$3 round=$4 out
    shift 4
    out=$("$BIN/flashsale-bench" --json "$@" 2>>"$WORK/bench.log") || true
    if [ -z "$out" ]; then
        echo "  $group $series: no summary ($*)" >&2
        tail -3 "$WORK/bench.log" >&2
        FAILED=$((FAILED + 1))
        return 0
    fi
    printf '{"kind":"run","group":"%s","series":"%s","measure":"%s","round":%s,"summary":%s}\n' \
        "$group" "$series" "$measure" "$round" "$out" >>"${OUT:-$RESULTS}"
    echo "$out" | python3 -c "
import json, sys
d = json.load(sys.stdin)
rate = d['accepted_per_sec'] if '$measure' == 'orders' else d['throughput_rps']
print(f\"  {'$group':6} {'$series':20} {d['concurrency']:>5} conns {rate:>10.0f}/s  \"
      f\"p99 {d['latency_ms']['p99']:>8.2f} ms  {'ok' if d['ok'] else 'BROKEN'}\")" >&2
}
# side_by_side GROUP SERIES MEASURE ARGS…: the same run against the three
# nodes at once, a third of the connections each given by the caller.
side_by_side() {
    local group=$1 series=$2 measure=$3 n pids=()
    shift 3
    for n in "$N1" "$N2" "$N3"; do
        OUT="$WORK/part-${n##*:}" bench "$group" "$series" "$measure" 0 --url "$n" "$@" &
        pids+=($!)
    done
    for n in "${pids[@]}"; do wait "$n"; done
    # A node's run without a summary left no part (its count was lost with
    # the background shell).
    FAILED=$((FAILED + 3 - $(cat "$WORK"/part-* 2>/dev/null | wc -l)))
    cat "$WORK"/part-* >>"$RESULTS" 2>/dev/null || true
    rm -f "$WORK"/part-*
}

"$BIN/flashsale-bench-report" meta --command "$COMMAND" \
    --commit "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo '+changes')" \
    --method "Sweep: $SECS s per point at $(echo "$CONCS" | sed 's/ /, /g') connections; shapes: $ROUNDS round(s) of $SHAPE_SECS s per shape; commit: $ACCEPT orders with group commit, $PER_ORDER with one commit per order; nodes: $SECS s each. The durations keep the whole run near ten minutes on 2 cores (under 25 by design); the three-node rates are the sums of three load tools started together (a start skew of a fraction of a second, against 10 s floods). The history below has longer single runs." \
    $([ "$QUICK" = 1 ] && echo --quick) >"$RESULTS"

echo "starting servers (embedded, embedded with --commit-batch 1, 3 distributed nodes, the classic server)" >&2
start embedded /healthz
EMB=$URL
start per-order /healthz --commit-batch 1
PER=$URL
distributed node1
N1=$URL
N1_PID=${PIDS[-1]}
distributed node2
N2=$URL
distributed node3
N3=$URL
PORT=$((PORT + 1))
"$BIN/flashsale-classic" --listen "127.0.0.1:$PORT" --prefix "${NS}classic" >"$WORK/classic.log" 2>&1 &
PIDS+=($!)
CLASSIC_PID=$!
CLASSIC="http://127.0.0.1:$PORT"
# Its own "listening" line first: another process may hold the port.
for _ in $(seq 200); do
    grep -q "listening on $CLASSIC" "$WORK/classic.log" && curl -sf "$CLASSIC/healthz" >/dev/null && break
    sleep 0.1
done
grep -q "listening on $CLASSIC" "$WORK/classic.log" && curl -sf "$CLASSIC/healthz" >/dev/null ||
    { echo "the classic server did not start" >&2; cat "$WORK/classic.log" >&2; exit 1; }

# Stock and buyers for duration-bound accept runs: more than any run here
# sells, so every answer is a 201 (the baselines need no tokens: a million
# buyers cost nothing).
BIG=2000000
BUYERS=300000
echo "sweep: $CONCS connections, $SECS s each" >&2
for c in $CONCS; do
    bench sweep healthz requests 0 --url "$EMB" --mode healthz --concurrency "$c" --duration "${SECS}s"
    bench sweep sold-out requests 0 --url "$EMB" --stock 100 --users 5000 --concurrency "$c" --duration "${SECS}s"
    bench sweep accept-embedded orders 0 --url "$EMB" --stock "$BIG" --users "$BUYERS" \
        --concurrency "$c" --duration "${SECS}s" --verify-sample 2000
    bench sweep accept-distributed orders 0 --url "$N1" --stock "$BIG" --users "$BUYERS" \
        --concurrency "$c" --duration "${SECS}s" --verify-sample 2000 --server-pid "$N1_PID"
    # Every accepted order is checked on the classic server's queue.
    bench sweep classic-http orders 0 --url "$CLASSIC" --stock "$BIG" --users "$BUYERS" \
        --concurrency "$c" --duration "${SECS}s" --server-pid "$CLASSIC_PID"
    bench sweep redis-coalesced orders 0 --mode redis-coalesced --stock "$BIG" --users 1000000 \
        --concurrency "$c" --duration "${SECS}s"
    bench sweep redis-evalsha orders 0 --mode redis-evalsha --stock "$BIG" --users 1000000 \
        --concurrency "$c" --duration "${SECS}s"
    bench sweep pg-row-lock orders 0 --mode pg-row-lock --database "$DB" --stock "$BIG" --users 1000000 \
        --concurrency "$c" --duration "${SECS}s"
done

echo "shapes: $ROUNDS round(s), 64 connections, $SHAPE_SECS s each" >&2
for round in $(seq "$ROUNDS"); do
    bench shapes healthz requests "$round" --url "$EMB" --mode healthz --concurrency 64 --duration "${SHAPE_SECS}s"
    for shape in bare json keyed replayed; do
        bench shapes "$shape" requests "$round" --url "$EMB" --shape "$shape" --stock 100 --users 5000 \
            --concurrency 64 --duration "${SHAPE_SECS}s"
    done
done

echo "commit: group commit vs one commit per order, 64 connections" >&2
bench commit group-commit orders 0 --url "$EMB" --stock "$ACCEPT" --users "$ACCEPT" --requests "$ACCEPT" \
    --concurrency 64 --verify-sample 5000
bench commit commit-per-order orders 0 --url "$PER" --stock "$PER_ORDER" --users "$PER_ORDER" \
    --requests "$PER_ORDER" --concurrency 64 --verify-sample 1000

echo "nodes: 1 distributed node vs 3 at once" >&2
SALE=$(curl -sf -XPOST "$N1/api/v1/sales" -H "Authorization: Bearer $FLASHSALE_ADMIN_TOKEN" \
    -H 'Content-Type: application/json' \
    -d '{"item":"report-flood","stock":100,"starts_at":"2020-01-01T00:00:00Z"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
"$BIN/flashsale-bench" --url "$N1" --sale-id "$SALE" --users 200 --requests 400 --no-verify --json >/dev/null 2>&1
sleep 1
bench nodes sold-out-1-node requests 0 --url "$N1" --sale-id "$SALE" --users 10000 --concurrency 63 \
    --duration "${SECS}s" --no-verify
side_by_side nodes sold-out-3-nodes requests --sale-id "$SALE" --users 10000 --concurrency 21 \
    --duration "${SECS}s" --no-verify
bench nodes accept-1-node orders 0 --url "$N1" --stock "$BIG" --users 100000 --concurrency 63 \
    --duration "${SECS}s" --verify-sample 1000
side_by_side nodes accept-3-nodes orders --stock "$BIG" --users 100000 --concurrency 21 \
    --duration "${SECS}s" --verify-sample 1000

"$BIN/flashsale-bench-report" render --results "$RESULTS" --doc "$DOC" --plots "$PLOTS"
echo "done in $(($(date +%s) - STARTED)) s; results kept in $RESULTS" >&2
if [ "$FAILED" -gt 0 ]; then
    echo "$FAILED run(s) produced no summary (see above)" >&2
    exit 1
fi
