#!/usr/bin/env bash
# Fuzzes a real `flashsale serve` against its own OpenAPI document
# (GET /api/v1/openapi.json, src/http/openapi.rs) with schemathesis: every
# answer must be documented (status, content type, body schema) and none
# may be a 5xx. Part of scripts/test.sh; runs in about a minute.
#
#   ./scripts/schemathesis.sh [extra `st run` arguments, e.g. --max-examples 100]
#
# schemathesis is installed, pinned, in a venv under ~/.cache (reused across
# runs; FLASHSALE_SCHEMATHESIS_VENV overrides the place). The server is the
# debug build cargo's tests use, on a free port with a temporary data dir and
# fresh admin token and JWT secret; it is stopped on any exit.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV="${FLASHSALE_SCHEMATHESIS_VENV:-$HOME/.cache/flashsale/schemathesis-$SCHEMATHESIS_VERSION}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-30}"

./scripts/python-venv.sh "$VENV" "schemathesis==$SCHEMATHESIS_VERSION"

cargo build --quiet --bin flashsale
bin="${CARGO_TARGET_DIR:-target}/debug/flashsale"

work=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-schemathesis.XXXXXX")
server_pid=""
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        # A clean stop takes well under a second; do not wait forever.
        for _ in $(seq 100); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

random() { "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(24))'; }
port=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
admin_token=$(random)
jwt_secret=$(random)

# Only the variables set here: none of the caller's FLASHSALE_* settings.
env $(env | grep -o '^FLASHSALE_[A-Z0-9_]*' | sed 's/^/-u /') \
    FLASHSALE_ADMIN_TOKEN="$admin_token" FLASHSALE_JWT_SECRET="$jwt_secret" \
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --user-rate 0 \
    >"$work/server.log" 2>&1 </dev/null &
server_pid=$!

for _ in $(seq 300); do
    curl -fsS -o /dev/null "$base/healthz" 2>/dev/null && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "schemathesis.sh: flashsale serve exited:" >&2
        cat "$work/server.log" >&2
        exit 1
    fi
    sleep 0.1
done

buyer_token=$("$bin" token --user schemathesis-buyer --jwt-secret "$jwt_secret")

# A sale open for a day with plenty of stock, and one order of the buyer's,
# so the fuzzer reaches the answers of real objects and not only 404s.
starts_at=$(date -u -d '-1 minute' +%Y-%m-%dT%H:%M:%SZ)
ends_at=$(date -u -d '+1 day' +%Y-%m-%dT%H:%M:%SZ)
sale=$(curl -fsS -X POST "$base/api/v1/sales" \
    -H "Authorization: Bearer $admin_token" -H 'Content-Type: application/json' \
    -d "{\"item\":\"schemathesis\",\"stock\":1000000,\"per_user_limit\":1000000,\
\"starts_at\":\"$starts_at\",\"ends_at\":\"$ends_at\",\"payment_window_secs\":3600}")
sale_id=$("$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["id"])' <<<"$sale")
order=$(curl -fsS -X POST "$base/api/v1/sales/$sale_id/purchase" \
    -H "Authorization: Bearer $buyer_token")
order_id=$("$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["order_id"])' <<<"$order")

# One run serves both roles: schemathesis sends each operation the token of
# the scheme its `security` names (`buyer` or `admin`), none to public ones.
# Path ids are the real ones most of the time, generated otherwise.
cat >"$work/schemathesis.toml" <<EOF
[auth.openapi.buyer]
bearer = "\${FS_BUYER_TOKEN}"

[auth.openapi.admin]
bearer = "\${FS_ADMIN_TOKEN}"

[dictionaries.sale_ids]
values = ["$sale_id"]

[dictionaries.order_ids]
values = ["$order_id"]

[parameters]
"path.sale_id" = { dictionary = "sale_ids", probability = 0.6 }
"path.order_id" = { dictionary = "order_ids", probability = 0.6 }
EOF

echo "schemathesis.sh: fuzzing $base (sale $sale_id, order $order_id)"
status=0
# The live events streams never end (a real sale's, a buyer's orders'), so
# they are left out (tests/api/sales.rs and tests/api/buyer_stream.rs drive
# them).
FS_BUYER_TOKEN="$buyer_token" FS_ADMIN_TOKEN="$admin_token" \
    "$VENV/bin/st" --config-file "$work/schemathesis.toml" run "$base/api/v1/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" \
    --exclude-path '/api/v1/sales/{sale_id}/events' \
    --exclude-path '/api/v1/orders/events' \
    --generation-database none \
    --request-timeout 10 \
    --no-color \
    "$@" || status=$?

if [ "$status" -ne 0 ]; then
    echo "schemathesis.sh: FAILED (exit $status); the server's log:" >&2
    tail -n 50 "$work/server.log" >&2
fi
exit "$status"
