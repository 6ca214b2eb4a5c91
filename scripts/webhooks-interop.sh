#!/usr/bin/env bash
# Checks that shops can verify Flashsale's webhooks with the Standard
# Webhooks project's own library (Python `standardwebhooks`): a receiver
# built on it verifies every delivery of a real `flashsale serve` (an order
# accepted, paid; another accepted, cancelled) and answers 200 only to
# those that verify. Part of scripts/test.sh; runs in a few seconds.
#
#   ./scripts/webhooks-interop.sh
#
# The library is installed, pinned, in a venv under ~/.cache (reused across
# runs; FLASHSALE_WEBHOOKS_VENV overrides the place). The server is the
# debug build on a free port with a temporary data dir; every process
# started here is stopped on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."

STANDARDWEBHOOKS_VERSION=1.1.0
VENV="${FLASHSALE_WEBHOOKS_VENV:-$HOME/.cache/flashsale/standardwebhooks-$STANDARDWEBHOOKS_VERSION}"

./scripts/python-venv.sh "$VENV" "standardwebhooks==$STANDARDWEBHOOKS_VERSION"

cargo build --quiet --bin flashsale
bin="${CARGO_TARGET_DIR:-target}/debug/flashsale"

work=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-webhooks.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
random() { "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(24))'; }
secret="whsec_$("$VENV/bin/python" -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')"
hook_port=$(free_port)
port=$(free_port)
base="http://127.0.0.1:$port"
admin_token=$(random)
jwt_secret=$(random)

# The receiver: the library's verify() decides the answer; one line per
# request in received.log ("OK <id> <type>" or "BAD <reason>").
cat >"$work/receiver.py" <<'PY'
import http.server, sys
from standardwebhooks.webhooks import Webhook

wh = Webhook(sys.argv[2])
log = open(sys.argv[3], "a", buffering=1)

class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            event = wh.verify(body, headers)
            assert event["id"] == headers["webhook-id"], "payload id differs from webhook-id"
            log.write(f"OK {headers['webhook-id']} {event['type']}\n")
            self.send_response(200)
        except Exception as e:
            log.write(f"BAD {e!r}\n")
            self.send_response(400)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Receiver).serve_forever()
PY
touch "$work/received.log"
"$VENV/bin/python" "$work/receiver.py" "$hook_port" "$secret" "$work/received.log" \
    >"$work/receiver.out" 2>&1 &
pids+=($!)

env $(env | grep -o '^FLASHSALE_[A-Z0-9_]*' | sed 's/^/-u /') \
    FLASHSALE_ADMIN_TOKEN="$admin_token" FLASHSALE_JWT_SECRET="$jwt_secret" \
    FLASHSALE_WEBHOOK_SECRET="$secret" \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --user-rate 0 \
    --webhook-url "http://127.0.0.1:$hook_port/hooks/flashsale" \
    >"$work/server.log" 2>&1 </dev/null &
server_pid=$!
pids+=("$server_pid")
for _ in $(seq 300); do
    curl -fsS -o /dev/null "$base/healthz" 2>/dev/null && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "webhooks-interop.sh: flashsale serve exited:" >&2
        cat "$work/server.log" >&2
        exit 1
    fi
    sleep 0.1
done

json() { "$VENV/bin/python" -c "import json, sys; print(json.load(sys.stdin)[\"$1\"])"; }
starts_at=$(date -u -d '-1 minute' +%Y-%m-%dT%H:%M:%SZ)
sale_id=$(curl -fsS -X POST "$base/api/v1/sales" -H "Authorization: Bearer $admin_token" \
    -d "{\"item\":\"interop\",\"stock\":10,\"starts_at\":\"$starts_at\"}" | json id)
expected=()
for user in ann bob; do
    token=$("$bin" token --user "$user" --jwt-secret "$jwt_secret")
    order_id=$(curl -fsS -X POST "$base/api/v1/sales/$sale_id/purchase" \
        -H "Authorization: Bearer $token" | json order_id)
    expected+=("evt_${order_id}_accepted")
    if [ "$user" = ann ]; then
        action=pay kind=paid
    else
        action=cancel kind=cancelled
    fi
    curl -fsS -o /dev/null -X POST "$base/api/v1/orders/$order_id/$action" \
        -H "Authorization: Bearer $token"
    expected+=("evt_${order_id}_${kind}")
done

passed=0
failed=0
for id in "${expected[@]}"; do
    for _ in $(seq 100); do
        grep -q "^OK $id " "$work/received.log" && break
        sleep 0.1
    done
    if grep -q "^OK $id " "$work/received.log"; then
        passed=$((passed + 1))
    else
        echo "webhooks-interop.sh: $id was not delivered and verified" >&2
        failed=$((failed + 1))
    fi
done
if grep -q '^BAD' "$work/received.log"; then
    echo "webhooks-interop.sh: deliveries the library refused:" >&2
    grep '^BAD' "$work/received.log" >&2
    failed=$((failed + $(grep -c '^BAD' "$work/received.log")))
fi
# Not the "N passed, N failed" shape: CI reads that as the run's count.
if [ "$failed" -ne 0 ]; then
    echo "webhooks-interop.sh: FAILED ($failed of ${#expected[@]} events not verified)" >&2
    exit 1
fi
echo "webhooks-interop.sh: all $passed events delivered and verified by standardwebhooks"
