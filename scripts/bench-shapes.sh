#!/usr/bin/env bash
# The sold-out purchase in every request shape a buyer sends, against the
# same server's GET /healthz, in one run: wrk -t1 -c$CONC -d$SECS, 5,000
# rotating buyer tokens, $ROUNDS rounds alternating
#   healthz, no body, {"quantity":1} + JSON content type,
#   the same with a fresh Idempotency-Key per request, with a replayed key.
# Prints each round's rate, each shape's median rate / median healthz rate,
# the worst p99, and the server's CPU time (user + system, /proc) per request.
# The ceiling is GET /healthz sent through the same wrk script as the
# shapes, so both sides pay wrk's per-request script call on the two cores
# they share; wrk's script-less /healthz run is shown beside it.
#
#   ./scripts/bench-shapes.sh [seconds per run, default 10]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-10}"
CONC="${CONC:-64}"
ROUNDS="${ROUNDS:-3}"
BUYERS="${BUYERS:-5000}"
BIN="${CARGO_TARGET_DIR:-target}/release/flashsale"
./scripts/debian-package.sh wrk wrk
export FLASHSALE_ADMIN_TOKEN=bench-admin FLASHSALE_JWT_SECRET=bench-secret
cargo build --release --quiet
WORK=$(mktemp -d)
PORT="${PORT:-18390}"
URL="http://127.0.0.1:$PORT"
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT

"$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" >"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 100); do curl -sf "$URL/healthz" >/dev/null && break; sleep 0.1; done
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }
SALE=$(curl -sf -XPOST "$URL/api/v1/sales" -H "Authorization: Bearer $FLASHSALE_ADMIN_TOKEN" \
    -H 'Content-Type: application/json' \
    -d '{"item":"shapes","stock":1,"starts_at":"2020-01-01T00:00:00Z"}' | field 'd["id"]')
"$BIN" token --user shapes --count "$BUYERS" >"$WORK/tokens"
# The one unit goes to the first buyer; every request below is refused.
curl -sf -o /dev/null -XPOST "$URL/api/v1/sales/$SALE/purchase" \
    -H "Authorization: Bearer $(sed -n 1p "$WORK/tokens")"
export TOKENS="$WORK/tokens" SALE_ID="$SALE"

# Each shape's answer, once by hand: all must be 409 sold_out.
T=$(sed -n 2p "$WORK/tokens")
for args in "" "-H Content-Type:application/json -d {\"quantity\":1}" \
    "-H Content-Type:application/json -d {\"quantity\":1} -H Idempotency-Key:check-1"; do
    # shellcheck disable=SC2086
    answer=$(curl -s -XPOST "$URL/api/v1/sales/$SALE/purchase" -H "Authorization: Bearer $T" $args)
    [ "$answer" = '{"error":{"code":"sold_out","message":"sold out"}}' ] \
        || { echo "unexpected answer: $answer" >&2; exit 1; }
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
run() { # shape → "rate p99_ms server_cpu_us_per_request"
    local shape=$1 out="$WORK/wrk.out" before
    before=$(cpu_ticks)
    if [ "$shape" = static ]; then
        wrk -t1 -c"$CONC" -d"${SECS}s" --latency "$URL/healthz" >"$out"
    else
        SHAPE=$shape NONCE="$RANDOM$RANDOM-$shape" \
            wrk -t1 -c"$CONC" -d"${SECS}s" --latency -s scripts/wrk/shapes.lua "$URL" >"$out"
    fi
    local ticks=$(($(cpu_ticks) - before))
    if grep -q "Socket errors" "$out"; then grep "Socket errors" "$out" >&2; fi
    awk -v ticks="$ticks" -v tick_us="$TICK_US" '/requests in/ {n=$1} /Requests\/sec/ {r=$2} $1 == "99%" {p=$2} END {
        if (p ~ /us$/) { sub(/us$/, "", p); p /= 1000 } else if (p ~ /ms$/) { sub(/ms$/, "", p) }
        else if (p ~ /s$/) { sub(/s$/, "", p); p *= 1000 }
        printf "%d %.2f %.2f\n", r, p, ticks * tick_us / n }' "$out"
}

echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); machine: $(nproc) cores, $(uname -r); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "wrk -t1 -c$CONC -d${SECS}s, $BUYERS rotating buyer tokens, sold-out sale $SALE, $ROUNDS rounds"
# Warm-up: every buyer's replay key gets its first (recorded) answer.
SHAPE=replay wrk -t1 -c"$CONC" -d2s -s scripts/wrk/shapes.lua "$URL" >/dev/null
wrk -t1 -c"$CONC" -d2s "$URL/healthz" >/dev/null
SHAPES=(static healthz nobody json fresh replay)
RESULTS="$WORK/results"
for round in $(seq "$ROUNDS"); do
    for shape in "${SHAPES[@]}"; do
        echo "$round $shape $(run "$shape")" | tee -a "$RESULTS" >&2
    done
done
STATS=$(curl -sf "$URL/api/v1/sales/$SALE/stats" -H "Authorization: Bearer $FLASHSALE_ADMIN_TOKEN")
RSS=$(awk '/VmRSS/ {print $2 " " $3}' "/proc/$PID/status")
python3 - "$RESULTS" "$STATS" "$RSS" <<'PY'
import json, statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
names = {"static": "GET /healthz, wrk without a script", "healthz": "GET /healthz (the ceiling)", "nobody": "sold-out, no body",
         "json": 'sold-out, {"quantity":1} + JSON type', "fresh": "sold-out, JSON + fresh Idempotency-Key",
         "replay": "sold-out, JSON + replayed Idempotency-Key"}
by = {}
for r, shape, rate, p99, cpu in rows:
    by.setdefault(shape, []).append((int(r), float(rate), float(p99), float(cpu)))
health = {r: rate for r, rate, _, _ in by["healthz"]}
h_med = statistics.median(health.values())
h_cpu = statistics.median(c for _, _, _, c in by["healthz"])
print(f"\n{'run':42} {'rates /s (rounds)':>24} {'median':>8} {'/healthz':>9} {'per round':>16} {'p99 max':>8} {'cpu us/req':>10} {'healthz cpu / cpu':>17}")
ok = True
for shape in ["static", "healthz", "nobody", "json", "fresh", "replay"]:
    runs = by[shape]
    med = statistics.median(rate for _, rate, _, _ in runs)
    ratio = med / h_med
    per_round = " ".join(f"{rate / health[r]:.2f}" for r, rate, _, _ in runs)
    p99 = max(p for _, _, p, _ in runs)
    cpu = statistics.median(c for _, _, _, c in runs)
    rates = " ".join(str(round(rate)) for _, rate, _, _ in runs)
    print(f"{names[shape]:42} {rates:>24} {round(med):>8} {ratio:>9.2f} {per_round:>16} {p99:>6.2f}ms {cpu:>10.2f} {h_cpu / cpu:>17.2f}")
    if shape not in ("healthz", "static"):
        ok &= ratio >= 0.90 and p99 <= 10
stats = json.loads(sys.argv[2])
print(f"\nsale stats: attempts {stats['attempts']}, sold_out {stats['rejected']['sold_out']}, "
      f"replayed {stats['replayed']}, accepted {stats['accepted']}, intents {stats['intents']}; server RSS {sys.argv[3]}")
print("targets (every shape >= 0.90 of healthz, p99 <= 10 ms):", "met" if ok else "NOT met")
PY
