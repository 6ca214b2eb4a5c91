#!/usr/bin/env bash
# One hot sale over a 3-master Redis Cluster, with its stock in 1 bucket and
# in 3: how the sale's script calls (EVALSHA) spread over the masters, and the
# accept rate. Private redis-server processes (the machine's Redis is not
# touched), PostgreSQL and RabbitMQ of this machine. docs/BENCHMARKS.md
# records its output.
#
#   ./scripts/bench-buckets.sh [purchases per run, default 30000]
#
# BIN=target/debug/flashsale runs a debug build instead of building release.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-30000}"
export FLASHSALE_ADMIN_TOKEN=bench-admin FLASHSALE_JWT_SECRET=bench-secret
./scripts/services.sh check postgres rabbitmq
if [ -z "${BIN:-}" ]; then
    cargo build --release --quiet
    BIN="${CARGO_TARGET_DIR:-target}/release/flashsale"
fi
RUN=$(printf '%08x' $((RANDOM * 32768 + RANDOM)))
SCHEMA="fs_bench_buckets_$RUN"
NS="fsbb$RUN"
DB="postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3D$SCHEMA"
psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE SCHEMA $SCHEMA"
WORK=$(mktemp -d)
PORTS=(17801 17802 17803)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    psql -q -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" || true
    rabbitmqctl delete_queue "$NS.orders" >/dev/null 2>&1 || true
    rabbitmqctl delete_queue "$NS.orders.dlq" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

for p in "${PORTS[@]}"; do
    mkdir -p "$WORK/r$p"
    (cd "$WORK/r$p" && exec redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no \
        --cluster-enabled yes --cluster-node-timeout 2000 >"$WORK/r$p.log" 2>&1) &
    PIDS+=($!)
done
for p in "${PORTS[@]}"; do
    for _ in $(seq 50); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
done
redis-cli --cluster create "${PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 100); do
    redis-cli -p "${PORTS[0]}" cluster info | grep -q 'cluster_state:ok' && break; sleep 0.1
done
SEEDS=$(printf 'redis://127.0.0.1:%s,' "${PORTS[@]}"); SEEDS=${SEEDS%,}
"$BIN" serve --listen 127.0.0.1:17810 --data-dir "$WORK/node" --user-rate 0 \
    --database "$DB" --redis "$SEEDS" --redis-cluster \
    --queue 'amqp://guest:guest@127.0.0.1:5672/%2f' --namespace "$NS" >"$WORK/node.log" 2>&1 &
PIDS+=($!)
URL=http://127.0.0.1:17810
for _ in $(seq 300); do curl -sf "$URL/readyz" >/dev/null && break; sleep 0.1; done

calls() { # port
    redis-cli -p "$1" info commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\),.*/\1/p' | tr -d '\r'
}
echo "machine: $(nproc) cores, $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg); $N purchases a run"
printf '\n%-9s %10s %8s %8s %-10s  %s\n' buckets "orders/s" "p50 ms" "p99 ms" invariants "EVALSHA per master (share)"
for k in 1 3; do
    declare -A before
    for p in "${PORTS[@]}"; do before[$p]=$(calls "$p"); done
    OUT=$("$BIN" bench --url "$URL" --json --stock "$N" --users "$N" --requests "$N" \
        --concurrency 256 --buckets "$k" --verify-sample 2000 2>"$WORK/bench-$k.err") || { echo "bench failed (buckets $k):"; cat "$WORK/bench-$k.err"; echo "$OUT"; exit 1; }
    SPREAD=""
    TOTAL=0
    declare -A used
    for p in "${PORTS[@]}"; do used[$p]=$(( $(calls "$p") - before[$p] )); TOTAL=$((TOTAL + used[$p])); done
    for p in "${PORTS[@]}"; do
        SPREAD+="$(python3 -c "print(f'{${used[$p]}} ({${used[$p]} / max($TOTAL, 1):.0%})')")  "
    done
    echo "$OUT" | python3 -c "
import json, sys
d = json.load(sys.stdin)
print(f\"{$k:<9} {round(d['accepted_per_sec']):>10} {d['latency_ms']['p50']:>8} {d['latency_ms']['p99']:>8} {('ok' if d['ok'] else 'BROKEN'):<10}  $SPREAD\")"
done
echo "Each run also counts the node's stock watcher (every 250 ms, one call per bucket) and relay."
