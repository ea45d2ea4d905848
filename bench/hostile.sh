#!/usr/bin/env bash
# Issue 14's load figures, as a markdown report on stdout (progress on stderr): a flood of
# hostile connections (half slowloris, half 64 KiB headers; HOSTILE_CONNECTIONS, default 2000,
# from 16 addresses of another network namespace, each reopened 1 s after the server closes
# it, for HOSTILE_SECONDS, default 30) against the status server of a release build, then
# the same flood against its gateway (with a token; the status server on loopback), each with
# its RSS, /healthz probed every 50 ms from the host and how long half-sent requests stay
# open; then a redis-server stopped for 8 s while `once` holds the lease.
#
# The measuring code is the test suite's (tests/hostile_flood.rs, tests/hostile.rs), built
# with the release profile, so the benchmark and the test cannot drift apart. Needs root (network namespaces),
# iproute2 and redis-server; scripts/test.sh installs them.
#
#   sudo bench/hostile.sh > report.md
set -euo pipefail
cd "$(dirname "$0")/.."
export HOSTILE_CONNECTIONS=${HOSTILE_CONNECTIONS:-2000} HOSTILE_SECONDS=${HOSTILE_SECONDS:-30}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "hostile: building the release profile" >&2
cargo test --release --locked --test hostile --test hostile_flood --no-run -q 2>&2

for target in status:a_flood_of_half_sent_and_oversized_requests_from_another_host_is_bounded \
  gateway:a_flood_against_the_gateway_is_bounded; do
  echo "hostile: flood of the ${target%%:*} listener, ${HOSTILE_CONNECTIONS} connections for ${HOSTILE_SECONDS}s, load average $(cut -d" " -f1-3 /proc/loadavg)" >&2
  HOSTILE_REPORT=$work/status.md HOSTILE_GATEWAY_REPORT=$work/gateway.md \
    cargo test --release --locked -q --test hostile_flood "${target#*:}" -- --exact >&2
done
echo "hostile: redis stall" >&2
HOSTILE_STALL_REPORT=$work/stall.md cargo test --release --locked -q --test hostile \
  a_redis_stall_while_holding_the_lease_ends_within_the_verify_timeout_and_a_lease -- --exact >&2

echo "## Hostile peers and a stalled store (issue 14)"
echo
echo "Release build of $(git rev-parse --short HEAD), $(nproc) cores, $(date -u +%Y-%m-%d); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
cat "$work/status.md"
echo
cat "$work/gateway.md"
echo
echo "| store fault | outcome |"
echo "|---|---|"
cat "$work/stall.md"
