#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need on a fresh Debian machine
# (tinyproxy for the proxy path, iproute2 for the network-namespace tests, redis-server for the
# fleet tests, which start their own servers on loopback, libfaketime for the clock cases of
# tests/hostile.rs), then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v tinyproxy >/dev/null 2>&1 || missing+=(tinyproxy)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v faketime >/dev/null 2>&1 || missing+=(faketime)
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
  else
    echo "warning: ${missing[*]} missing and cannot be installed here; the tests that need them say NOT RUN" >&2
  fi
fi
# libtest shows nothing a passing test prints, so a test that cannot run here (no root, a
# tool missing) writes its NOT RUN line past the capture and to this file too; the lines are
# listed again after the run, where the test output cannot bury them. Under CI=true such a
# test fails instead.
target_dir=${CARGO_TARGET_DIR:-target}
[[ $target_dir == /* ]] || target_dir=$PWD/$target_dir
mkdir -p "$target_dir"
export NOT_RUN_LOG=$target_dir/not-run.log
: >"$NOT_RUN_LOG"
status=0
cargo test --locked "$@" || status=$?
if [[ -s $NOT_RUN_LOG ]]; then
  echo >&2
  echo "NOT RUN: $(wc -l <"$NOT_RUN_LOG") test(s) could not run here:" >&2
  cat "$NOT_RUN_LOG" >&2
fi
exit "$status"
