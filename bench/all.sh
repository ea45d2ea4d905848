#!/usr/bin/env bash
# Every benchmark of issue 7, as one markdown report on stdout (progress on stderr):
#   the machine; bench/time-to-verified.sh (RUNS, default 15); bench/idle.sh (IDLE_SECONDS,
#   default 600); bench/size.sh.
# Both binaries are built first, so no compiler runs while anything is timed. The idle run
# (one sleeping sidecar) goes in the background while the time-to-verified runs in the
# foreground: it measures only its own process (memory, CPU, the emulator's call counts), and
# it makes the whole report take about IDLE_SECONDS instead of IDLE_SECONDS plus the rest.
#
#   bench/all.sh > report.md
set -euo pipefail
cd "$(dirname "$0")/.."
export RUNS=${RUNS:-15} IDLE_SECONDS=${IDLE_SECONDS:-600}
target_dir=${CARGO_TARGET_DIR:-target}
work=$(mktemp -d)
idle_pid=''
cleanup() { [[ -n $idle_pid ]] && kill "$idle_pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "all: building the release binary and the static one" >&2
cargo build --release --locked -q
bench/size.sh >"$work/size.md"   # builds the static binary; its report is printed last
export BIN=$target_dir/release/sendsms-whitelister

echo "all: idle run, ${IDLE_SECONDS}s, in the background" >&2
bench/idle.sh "$IDLE_SECONDS" >"$work/idle.md" 2>"$work/idle.err" &
idle_pid=$!

echo "all: time to verified, RUNS=$RUNS" >&2
bench/time-to-verified.sh >"$work/ttv.md"

echo "all: waiting for the idle run" >&2
if ! wait "$idle_pid"; then idle_pid=''; cat "$work/idle.err" >&2; exit 1; fi
idle_pid=''

mem_kib=$(awk '/^MemTotal/ {print $2}' /proc/meminfo)
cpu_model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
hypervisor=$(lscpu | sed -n 's/^Hypervisor vendor:[[:space:]]*//p' | head -1)
echo "## Benchmarks (issue 7)"
echo
echo "| machine | |"
echo "|---|---|"
echo "| CPU | ${cpu_model:-unknown}${hypervisor:+ (virtualized: $hypervisor)} |"
echo "| cores (online) | $(nproc) |"
echo "| RAM | $(awk -v k="$mem_kib" 'BEGIN { printf "%.1f GiB", k / 1048576 }') |"
echo "| kernel | $(uname -sr) |"
echo "| rustc | $(rustc --version) |"
echo "| commit | $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (src modified)') |"
echo "| date (UTC) | $(date -u +%Y-%m-%dT%H:%MZ) |"
echo "| load average at the end (1/5/15 min) | $(cut -d' ' -f1-3 /proc/loadavg) |"
echo
echo "Reproduce: \`bench/all.sh\` (RUNS=$RUNS, IDLE_SECONDS=$IDLE_SECONDS)."
echo
cat "$work/ttv.md"
echo
cat "$work/idle.md"
echo
cat "$work/size.md"
