#!/usr/bin/env bash
# Side-by-side benchmark of the distributed mode on this machine, in one run,
# against the machine's Redis, RabbitMQ and PostgreSQL. docs/BENCHMARKS.md
# records its output.
#
#   ./scripts/bench-distributed.sh [seconds per sold-out flood, default 10]
#
#   1. accept path over HTTP, one node           (flashsale bench, stock = buyers = 100,000; 64 and 256 connections)
#   2. the classic designs, same servers:        pg-row-lock, redis-evalsha (one EVALSHA + one confirmed publish per purchase)
#   3. Flashsale's coalesced step, same loop:    redis-coalesced, at 64, 256 and 1024 connections
#   4. sold-out flood: 1 node vs 3 nodes         (same total connections; rejections never reach Redis)
#   5. the order writer draining a pre-filled queue into PostgreSQL and into MariaDB
#      (flashsale bench --mode writer-drain, WRITER_ORDERS orders, default 200,000, one per message)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
WRITER_ORDERS="${WRITER_ORDERS:-200000}"
# `flashsale bench` runs the load tool `flashsale-bench` next to the server
# binary; `cargo build --release` at the root builds both.
BIN="${CARGO_TARGET_DIR:-target}/release/flashsale"
export FLASHSALE_ADMIN_TOKEN=bench-admin FLASHSALE_JWT_SECRET=bench-secret
./scripts/services.sh check postgres mariadb redis rabbitmq
cargo build --release --quiet
RUN=$(printf '%08x' $((RANDOM * 32768 + RANDOM)))
SCHEMA="fs_bench_dist_$RUN"
NS="fsbench$RUN"
DB="postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3D$SCHEMA"
psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE SCHEMA $SCHEMA"
WORK=$(mktemp -d)
PORT=18400
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    psql -q -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" || true
    redis-cli --scan --pattern "$NS:*" | xargs -r redis-cli del >/dev/null || true
    rabbitmqctl delete_queue "$NS.orders" >/dev/null 2>&1 || true
    rabbitmqctl delete_queue "$NS.orders.dlq" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

start() { # name
    PORT=$((PORT + 1))
    "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/$1" --user-rate 0 \
        --database "$DB" --redis redis://127.0.0.1:6379 \
        --queue 'amqp://guest:guest@127.0.0.1:5672/%2f' --namespace "$NS" \
        >"$WORK/$1.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
    URL="http://127.0.0.1:$PORT"
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
row() { # label json
    printf '%-52s %10s %8s %8s %s\n' "$1" \
        "$(echo "$2" | field 'round(d["accepted_per_sec"] if d["accepted"] > 1000 else d["throughput_rps"])')" \
        "$(echo "$2" | field 'd["latency_ms"]["p50"]')" \
        "$(echo "$2" | field 'd["latency_ms"]["p99"]')" \
        "$(echo "$2" | field '"ok" if d["ok"] else "BROKEN"')"
}

echo "machine: $(nproc) cores, $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
start node1; N1=$URL
start node2; N2=$URL
start node3; N3=$URL
printf '\n%-52s %10s %8s %8s %s\n' "run" "rate /s" "p50 ms" "p99 ms" "invariants"

A64=$("$BIN" bench --url "$N1" --json --stock 100000 --users 100000 --requests 100000 --concurrency 64 --verify-sample 2000 2>/dev/null)
row "accept over HTTP, 1 node, 64 conns (orders/s)" "$A64"
A256=$("$BIN" bench --url "$N1" --json --stock 100000 --users 100000 --requests 100000 --concurrency 256 --verify-sample 2000 2>/dev/null)
row "accept over HTTP, 1 node, 256 conns (orders/s)" "$A256"
G=$("$BIN" bench --mode pg-row-lock --json --stock 20000 --users 20000 --requests 20000 --concurrency 256 2>/dev/null)
row "pg-row-lock, 256 buyers over 64 connections" "$G"
declare -A E C
for c in 64 256 1024; do
    n=$((c * 400))
    E[$c]=$("$BIN" bench --mode redis-evalsha --json --stock $n --users $n --requests $n --concurrency $c 2>/dev/null)
    C[$c]=$("$BIN" bench --mode redis-coalesced --json --stock $n --users $n --requests $n --concurrency $c 2>/dev/null)
    row "redis-evalsha, $c conns" "${E[$c]}"
    row "redis-coalesced (Flashsale's step), $c conns" "${C[$c]}"
done

# Sold-out floods: a sale sold out at once, then 64 connections in all.
SALE=$(curl -s -XPOST "$N1/api/v1/sales" -H "Authorization: Bearer $FLASHSALE_ADMIN_TOKEN" \
    -d '{"item":"flood","stock":100,"starts_at":"2020-01-01T00:00:00Z"}' | field 'd["id"]')
"$BIN" bench --url "$N1" --sale-id "$SALE" --users 200 --requests 400 --no-verify --json >/dev/null 2>&1
sleep 1
S1=$("$BIN" bench --url "$N1" --json --sale-id "$SALE" --users 10000 --concurrency 64 --duration "${SECS}s" --no-verify 2>/dev/null)
row "sold-out flood, 1 node, 64 conns" "$S1"
FLOODS=()
for n in "$N1" "$N2" "$N3"; do
    "$BIN" bench --url "$n" --json --sale-id "$SALE" --users 10000 --concurrency 21 --duration "${SECS}s" --no-verify >"$WORK/s-${n##*:}" 2>/dev/null &
    FLOODS+=($!)
done
for p in "${FLOODS[@]}"; do wait "$p"; done
S3=$(cat "$WORK"/s-* | python3 -c '
import json, sys
runs = [json.loads(l) for l in sys.stdin if l.strip()]
print(json.dumps({"accepted": 0, "throughput_rps": sum(r["throughput_rps"] for r in runs),
  "latency_ms": {"p50": max(r["latency_ms"]["p50"] for r in runs), "p99": max(r["latency_ms"]["p99"] for r in runs)},
  "ok": all(r["ok"] for r in runs)}))')
row "sold-out flood, 3 nodes, 3 x 21 conns" "$S3"

# The writer alone: a private queue filled with WRITER_ORDERS orders (one per
# message, the hand-off's worst case), then the product's writer drains it
# into a private schema / database; every order checked stored once.
drain_row() { # label json
    printf '%-52s %10s %8s %8s %s\n' "$1" \
        "$(echo "$2" | field 'round(d["orders_per_sec"])')" "-" "-" \
        "$(echo "$2" | field '"ok" if d["ok"] else "BROKEN"')"
}
WPG=$("$BIN" bench --mode writer-drain --json --requests "$WRITER_ORDERS" \
    --database postgres://postgres@127.0.0.1:5432/test 2>/dev/null)
drain_row "writer drain into PostgreSQL (orders/s)" "$WPG"
WMY=$("$BIN" bench --mode writer-drain --json --requests "$WRITER_ORDERS" \
    --database mysql://root@127.0.0.1:3306/test 2>/dev/null)
drain_row "writer drain into MariaDB (orders/s)" "$WMY"
echo "$WPG" | field '"writer drain into PostgreSQL = %.0f orders/s (target >= 30,000)" % d["orders_per_sec"]'

python3 - "$A256" "$G" "${E[256]}" "${C[256]}" "${E[1024]}" "${C[1024]}" "${E[64]}" "${C[64]}" "$S1" "$S3" <<'PY'
import json, sys
a256, g, e256, c256, e1024, c1024, e64, c64, s1, s3 = (json.loads(x) for x in sys.argv[1:])
r = lambda d: d["accepted_per_sec"]
print()
print(f"accept over HTTP (256) / pg-row-lock (256)  = {r(a256) / r(g):6.1f}x  (target >= 20x)")
print(f"redis-coalesced / redis-evalsha,   64 conns = {r(c64) / r(e64):6.2f}x")
print(f"redis-coalesced / redis-evalsha,  256 conns = {r(c256) / r(e256):6.2f}x")
print(f"redis-coalesced / redis-evalsha, 1024 conns = {r(c1024) / r(e1024):6.2f}x  (target >= 2x)")
print(f"accept over HTTP (256) / redis-evalsha (256) = {r(a256) / r(e256):6.2f}x")
print(f"sold-out flood, 3 nodes / 1 node             = {s3['throughput_rps'] / s1['throughput_rps']:6.2f}x")
PY
echo "Redis EVALSHA calls by the nodes' stock watchers only; sold-out answers make none (test: sold_out_rejections_make_no_redis_calls)."
