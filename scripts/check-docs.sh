#!/usr/bin/env bash
# Documentation checks (issue 16): every fenced block in README.md, SECURITY.md,
# BENCHMARKS.md and docs/ is checked by the tool that reads it (tinyproxy, squid, Helm,
# kubernetes-validate, the compose spec, YAML and JSON parsers, bash -n), README.md's figures
# are quoted from BENCHMARKS.md, and every check is shown to fail on a broken sample. The
# markers are explained at the top of scripts/check_docs.py.
#
#   scripts/check-docs.sh       # as root (CI): installs tinyproxy, squid and iproute2 with apt-get
#
# Python packages go to a venv in .cache/docs/, Helm to .cache/tools/ (scripts/fetch-helm.sh).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$root/.cache/docs/venv
PATH=$PATH:/usr/sbin

missing=()
command -v tinyproxy >/dev/null || missing+=(tinyproxy)
command -v squid >/dev/null || missing+=(squid)
command -v ip >/dev/null || missing+=(iproute2)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "=== apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "warning: ${missing[*]} missing and not installable here; the checks that need them fail" >&2
  fi
fi

# A Debian system Python keeps venv in a separate package.
[[ -x $venv/bin/python ]] || python3 -m venv "$venv" || {
  rm -rf "$venv" && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv "$venv"
}
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  pyyaml==6.0.3 compose-spec==0.2.1 kubernetes-validate==1.37.0
helm=$(scripts/fetch-helm.sh)

"$venv/bin/python" scripts/check_docs.py all "$helm"
