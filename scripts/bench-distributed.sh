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
#   5. the fair peer, both over HTTP:            Flashsale's API node vs the classic reference server
#                                                (flashsale-classic) at 256 and 1024 connections, alternated,
#                                                stock = buyers = requests = 100,000; the API node's CPU per
#                                                accepted purchase (--roles api, the writer in another process);
#                                                PEER_N=… overrides the 100,000
#   6. the order writer draining a pre-filled queue into PostgreSQL and into MariaDB
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

# ---------------------------------------------------------------------------
# 5. The fair peer (issue 11). Flashsale against the classic design as an
# HTTP server of its own (flashsale-classic, crates/flashsale-bench/src/
# classic.rs: axum, the same JWT check, one EVALSHA that checks the stock and
# the per-user limit and deducts, one confirmed publish per order, 201 after
# the confirm), both floods over HTTP with the same stock, buyers, requests
# and connections, alternated. Flashsale runs as an API node (`--roles api`)
# with its order writer, relay and reconciler in another process, and
# `flashsale bench --server-pid` reports the API node's CPU (user + system,
# /proc/PID/stat) per accepted purchase. A build whose `serve` has no
# `--roles` runs one node with every role (its CPU then includes the writer).
# Everything here lives under a namespace, schema and queue of its own.
PEER_NS="fspeer$RUN"
PEER_SCHEMA="fs_bench_peer_$RUN"
PEER_DB="postgres://postgres@127.0.0.1:5432/test?options=-csearch_path%3D$PEER_SCHEMA"
CLASSIC_BIN="$(dirname "$BIN")/flashsale-classic"
psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE SCHEMA $PEER_SCHEMA"
peer_cleanup() {
    psql -q -h 127.0.0.1 -U postgres -d test -c "DROP SCHEMA IF EXISTS $PEER_SCHEMA CASCADE" || true
    for ns in "$PEER_NS" "${PEER_NS}classic"; do
        redis-cli --scan --pattern "$ns:*" | xargs -r redis-cli del >/dev/null || true
        rabbitmqctl delete_queue "$ns.orders" >/dev/null 2>&1 || true
        rabbitmqctl delete_queue "$ns.orders.dlq" >/dev/null 2>&1 || true
        if command -v rabbitmqadmin >/dev/null; then
            for x in events dlx; do rabbitmqadmin delete exchange name="$ns.$x" >/dev/null 2>&1 || true; done
        fi
    done
}
trap 'cleanup; peer_cleanup' EXIT
peer_wait() { # url path log: the server that wrote `log` answers `path`
    # (its own "listening on" line first: another process may hold the port)
    for _ in $(seq 150); do
        grep -q "listening on $1" "$3" 2>/dev/null && curl -sf "$1$2" >/dev/null && return 0
        sleep 0.1
    done
    echo "no answer from $1$2 (log $3):" >&2
    tail -5 "$3" >&2
    return 1
}
peer_node() { # name serve-args… → URL, PEER_PID
    local name=$1
    shift
    PORT=$((PORT + 1))
    "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/$name" --user-rate 0 \
        --database "$PEER_DB" --redis redis://127.0.0.1:6379 \
        --queue 'amqp://guest:guest@127.0.0.1:5672/%2f' --namespace "$PEER_NS" "$@" \
        >"$WORK/$name.log" 2>&1 &
    PEER_PID=$!
    PIDS+=("$PEER_PID")
    URL="http://127.0.0.1:$PORT"
    peer_wait "$URL" /readyz "$WORK/$name.log" || exit 1
}
if "$BIN" serve --help 2>/dev/null | grep -q -- '--roles'; then
    peer_node peer-api --roles api
    API=$URL API_PID=$PEER_PID
    peer_node peer-writer --roles writer,relay,reconciler
    API_NOTE="API node only (--roles api; writer, relay, reconciler in another process)"
else
    peer_node peer-api
    API=$URL API_PID=$PEER_PID
    API_NOTE="one node with every role (this build has no --roles): the writer's CPU is included"
fi
PORT=$((PORT + 1))
"$CLASSIC_BIN" --listen "127.0.0.1:$PORT" --prefix "${PEER_NS}classic" >"$WORK/classic.log" 2>&1 &
CLASSIC_PID=$!
PIDS+=("$CLASSIC_PID")
CLASSIC="http://127.0.0.1:$PORT"
peer_wait "$CLASSIC" /healthz "$WORK/classic.log" || exit 1

peer_row() { # label json
    printf '%-52s %10s %8s %8s %9s %s\n' "$1" \
        "$(echo "$2" | field 'round(d["accepted_per_sec"])')" \
        "$(echo "$2" | field 'd["latency_ms"]["p50"]')" \
        "$(echo "$2" | field 'd["latency_ms"]["p99"]')" \
        "$(echo "$2" | field 'd.get("server_cpu_us_per_accept", "-")')" \
        "$(echo "$2" | field '"ok" if d["ok"] else "BROKEN"')"
}
PEER_N="${PEER_N:-100000}"
peer_bench() { # url pid connections [flags…]: a run's JSON summary (a broken run still prints one)
    local url=$1 pid=$2 c=$3
    shift 3
    "$BIN" bench --url "$url" --json --stock $PEER_N --users $PEER_N --requests $PEER_N \
        --concurrency "$c" --server-pid "$pid" "$@" 2>>"$WORK/peer-bench.log" || true
}
echo
echo "the fair peer: Flashsale ($API_NOTE) vs the classic server, both over HTTP"
printf '%-52s %10s %8s %8s %9s %s\n' "run" "orders/s" "p50 ms" "p99 ms" "CPU µs/o" "invariants"
declare -A F K
for c in 256 1024; do
    F[$c]=$(peer_bench "$API" "$API_PID" "$c" --verify-sample 2000)
    peer_row "Flashsale API node over HTTP, $c conns" "${F[$c]}"
    K[$c]=$(peer_bench "$CLASSIC" "$CLASSIC_PID" "$c")
    peer_row "classic server over HTTP, $c conns" "${K[$c]}"
done
python3 - "${F[256]}" "${K[256]}" "${F[1024]}" "${K[1024]}" "$G" <<'PY'
import json, sys
f256, k256, f1024, k1024, g = (json.loads(x) for x in sys.argv[1:])
r = lambda d: d["accepted_per_sec"]
cpu = lambda d: d.get("server_cpu_us_per_accept") or float("nan")
print()
print(f"Flashsale / classic server, both over HTTP,  256 conns = {r(f256) / r(k256):6.2f}x  (target >= 1.5x)")
print(f"Flashsale / classic server, both over HTTP, 1024 conns = {r(f1024) / r(k1024):6.2f}x  (target >= 1.5x)")
print(f"Flashsale accept over HTTP (256) / pg-row-lock (256)   = {r(f256) / r(g):6.1f}x  (target >= 20x)")
print(f"Flashsale p99 at 1024 conns                            = {f1024['latency_ms']['p99']:6.1f} ms (target <= 50 ms)")
print(f"Flashsale node CPU per accepted purchase, 256 / 1024   = {cpu(f256):.1f} / {cpu(f1024):.1f} us (target <= 15 us)")
print(f"classic server CPU per accepted purchase, 256 / 1024   = {cpu(k256):.1f} / {cpu(k1024):.1f} us")
PY
