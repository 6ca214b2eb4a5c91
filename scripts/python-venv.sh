#!/usr/bin/env bash
# Makes sure the virtualenv DIR holds exactly these pinned PyPI packages,
# (re)creating it when one is missing or at another version; idempotent and
# quiet when nothing is to do. The project's Python tools (schemathesis,
# kubernetes-validate, check-jsonschema, standardwebhooks) live in such
# venvs under ~/.cache/flashsale.
#
#   ./scripts/python-venv.sh DIR name==version [name==version ...]
set -euo pipefail
[ "$#" -ge 2 ] || { echo "usage: $0 DIR name==version..." >&2; exit 2; }
venv=$1
shift

python=""
for candidate in python3 /root/.pyenv/shims/python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import venv' 2>/dev/null; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ]; then
    echo "python-venv.sh: no python3 with venv found" >&2
    exit 1
fi

# True when every pin is installed at its version.
pinned() {
    "$venv/bin/python" - "$@" <<'PY' 2>/dev/null
import importlib.metadata as m, sys
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    if m.version(name) != version:
        sys.exit(1)
PY
}

if ! pinned "$@"; then
    echo "python-venv.sh: installing $* into $venv"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
fi
