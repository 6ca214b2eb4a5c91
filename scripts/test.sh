#!/usr/bin/env bash
# Runs every test of the workspace: the README's test command and CI's last
# step.
#
#   ./scripts/test.sh [extra nextest arguments, e.g. a test-name filter]
set -euo pipefail
cd "$(dirname "$0")/.."

# Local services the tests need, checked (and started if down) before the
# run: the SQL order stores' contract tests use PostgreSQL and MariaDB.
REQUIRED_SERVICES=(postgres mariadb)

if ! cargo nextest --version >/dev/null 2>&1; then
    echo "test.sh: cargo-nextest is missing; installing it"
    cargo install cargo-nextest --locked
fi

if [ "${#REQUIRED_SERVICES[@]}" -gt 0 ]; then
    ./scripts/services.sh check "${REQUIRED_SERVICES[@]}"
fi

# Doctests first, nextest last, so the run closes on nextest's summary line.
# Both always run; the script fails if either did.
doc_status=0
cargo test --doc --workspace || doc_status=$?

nextest_status=0
cargo nextest run --workspace --no-fail-fast "$@" || nextest_status=$?

if [ "$doc_status" -ne 0 ] || [ "$nextest_status" -ne 0 ]; then
    echo "test.sh: FAILED (doctests exit $doc_status, nextest exit $nextest_status)" >&2
    exit 1
fi
