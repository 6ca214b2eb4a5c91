#!/usr/bin/env bash
# Proves the deployment files in deploy/ with the tools that read them, and
# fails on the first invalid one (CI's `== deployment files` phase):
#
#   - Prometheus: promtool check config (prometheus.yml, which loads
#     alerts.yaml), check rules, and test rules (alerts.test.yaml: every
#     alert fires, and stays quiet, when it should);
#   - Kubernetes: every manifest under deploy/k8s with kubernetes-validate,
#     strict (unknown fields are errors), against the schemas of
#     Kubernetes $K8S_VERSION; each kustomization's resources must exist;
#   - nginx: nginx -t on deploy/nginx.conf (a copy, see below);
#   - compose: deploy/compose*.yaml against the compose-spec JSON schema
#     that check-jsonschema ships (its vendored `vendor.compose-spec`);
#   - Grafana: the dashboard and provisioning files parse, and the
#     dashboard's datasource uid is the provisioned one;
#   - the Dockerfile with hadolint, only when it is installed (it is in none
#     of the registries this project may use, so it stays optional).
#
#   ./scripts/check-deploy.sh
#
# Installs what it needs: the Debian packages `prometheus` (promtool) and
# `nginx` through scripts/debian-package.sh, and the PyPI tools, pinned, in
# a venv under ~/.cache/flashsale (FLASHSALE_DEPLOY_VENV overrides it). Warm,
# it takes a few seconds. That every metric the alerts and the dashboard
# query is exported is a Rust test: tests/api/deploy_files.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_VERSION=1.31.0
KUBERNETES_VALIDATE_VERSION=1.37.0
CHECK_JSONSCHEMA_VERSION=0.39.0
VENV="${FLASHSALE_DEPLOY_VENV:-$HOME/.cache/flashsale/deploy-tools-$KUBERNETES_VALIDATE_VERSION-$CHECK_JSONSCHEMA_VERSION}"

step() { echo "check-deploy.sh: $*"; }
fail() {
    echo "check-deploy.sh: FAILED: $*" >&2
    exit 1
}

./scripts/debian-package.sh prometheus promtool
./scripts/debian-package.sh nginx nginx
# Debian installs nginx under /usr/sbin, which a non-root PATH may lack.
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

./scripts/python-venv.sh "$VENV" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "check-jsonschema==$CHECK_JSONSCHEMA_VERSION" || fail "installing the Python tools"

work=$(mktemp -d "${TMPDIR:-/tmp}/flashsale-check-deploy.XXXXXX")
trap 'rm -rf "$work"' EXIT

# ---- Prometheus -------------------------------------------------------------
step "promtool $(promtool --version 2>&1 | sed -n '1s/^promtool, version \([^ ]*\).*/\1/p')"
promtool check config deploy/prometheus/prometheus.yml || fail "deploy/prometheus/prometheus.yml"
promtool check rules deploy/prometheus/alerts.yaml || fail "deploy/prometheus/alerts.yaml"
(cd deploy/prometheus && promtool test rules alerts.test.yaml) || fail "deploy/prometheus/alerts.test.yaml"

# ---- Kubernetes -------------------------------------------------------------
step "kubernetes-validate, Kubernetes $K8S_VERSION schemas, strict"
manifests=()
while IFS= read -r f; do manifests+=("$f"); done < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml | sort)
[ "${#manifests[@]}" -gt 0 ] || fail "no manifests under deploy/k8s"
for f in "${manifests[@]}"; do
    # kubernetes-validate exits 0 on some failures it prints (a document it
    # cannot read), so its output is judged too.
    out=$("$VENV/bin/kubernetes-validate" --strict -k "$K8S_VERSION" "$f" 2>&1) || fail "$f: $out"
    if grep -qiE 'error|fail|invalid' <<<"$out"; then
        fail "$f: $out"
    fi
    echo "  $f: valid"
done
# A Kustomization has no Kubernetes schema: check that what it lists exists.
while IFS= read -r k; do
    dir=$(dirname "$k")
    "$VENV/bin/python" - "$k" <<'EOF' || fail "$k"
import pathlib, sys, yaml
path = pathlib.Path(sys.argv[1])
doc = yaml.safe_load(path.read_text())
assert doc.get("kind") == "Kustomization", f"{path}: not a Kustomization"
missing = [r for r in doc.get("resources", []) if not (path.parent / r).exists()]
assert not missing, f"{path}: resources not found: {missing}"
EOF
    echo "  $k: resources present"
done < <(find deploy/k8s -name kustomization.yaml | sort)

# ---- nginx ------------------------------------------------------------------
# The upstreams are compose service names (node1..node3), which resolve only
# inside compose's network, and nginx -t resolves every `server` name: the
# copy tested maps them to 127.0.0.1 and changes nothing else. The prefix
# and error log point into the scratch dir, so no root-owned path is needed.
step "$("$nginx_bin" -v 2>&1)"
sed -E 's/^([[:space:]]*server[[:space:]]+)node[0-9]+(:[0-9]+)/\1127.0.0.1\2/' deploy/nginx.conf >"$work/nginx.conf"
mkdir -p "$work/logs"
"$nginx_bin" -t -q -p "$work" -e "$work/logs/error.log" -c "$work/nginx.conf" \
    -g "pid $work/nginx.pid;" || fail "deploy/nginx.conf"
echo "  deploy/nginx.conf: valid"

# ---- compose ----------------------------------------------------------------
step "compose files against the compose-spec schema (check-jsonschema's vendor.compose-spec)"
"$VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec deploy/compose*.yaml ||
    fail "compose file(s) do not match the compose-spec schema"

# ---- Grafana ----------------------------------------------------------------
step "Grafana dashboard and provisioning"
"$VENV/bin/python" - <<'EOF' || fail "deploy/grafana"
import json, pathlib, yaml
root = pathlib.Path("deploy/grafana")
uids = set()
for f in sorted((root / "provisioning").rglob("*.yaml")):
    doc = yaml.safe_load(f.read_text())
    assert doc.get("apiVersion") == 1, f"{f}: apiVersion must be 1"
    uids.update(d["uid"] for d in doc.get("datasources", []))
    for p in doc.get("providers", []):
        assert p["options"]["path"] == "/var/lib/grafana/dashboards", f"{f}: provider path"
for f in sorted((root / "dashboards").glob("*.json")):
    dash = json.loads(f.read_text())
    assert dash.get("uid") and dash.get("title"), f"{f}: uid and title"
    used = set()
    for panel in dash["panels"]:
        for t in [panel] + panel.get("targets", []):
            if "datasource" in t:
                used.add(t["datasource"]["uid"])
        assert panel["type"] == "row" or panel.get("targets"), f"{f}: panel {panel['title']} has no query"
    assert used <= uids, f"{f}: datasources {used - uids} are not provisioned ({uids})"
    print(f"  {f}: {len(dash['panels'])} panels, datasources {sorted(used)}")
EOF

# ---- Dockerfile (optional) --------------------------------------------------
if command -v hadolint >/dev/null 2>&1; then
    step "hadolint"
    hadolint Dockerfile || fail "Dockerfile"
else
    step "hadolint not installed; Dockerfile not linted (optional)"
fi

step "every deployment file is valid"
