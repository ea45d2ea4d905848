#!/usr/bin/env bash
# Idle footprint of `run`: resident memory, CPU time and sendSMS calls after DURATION seconds
# (default 600, or $IDLE_SECONDS) of following an unchanged egress IP with the default poll
# interval, against the emulator on loopback. The idle period is counted from the moment the
# sidecar first answers /readyz 200 (the first verification); calls are counted in total and
# after that moment, from the emulator's /_emulator/state.
# Prints a markdown table. Needs curl and python3.
# Usage: bench/idle.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-${IDLE_SECONDS:-600}}"
target_dir=${CARGO_TARGET_DIR:-target}
if [[ -z ${BIN:-} ]]; then cargo build --release --locked -q; fi
bin=${BIN:-$target_dir/release/sendsms-whitelister}
work=$(mktemp -d)
emu='' side=''
cleanup() {
  [[ -n $side ]] && kill "$side" 2>/dev/null || true
  [[ -n $emu ]] && kill "$emu" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$bin" emulator --listen 127.0.0.1:0 --dns-listen 127.0.0.1:0 --username bench \
  --default-key bench-key --allow 127.0.0.2 --rate-limit 0 >"$work/emu.out" 2>/dev/null &
emu=$!
for _ in $(seq 100); do [[ $(wc -l <"$work/emu.out") -ge 2 ]] && break; sleep 0.05; done
http=$(sed -n 's|^listening on http://||p' "$work/emu.out")
dns=$(sed -n 's|^dns listening on udp://||p' "$work/emu.out")
[[ -n $http && -n $dns ]] || { echo "the emulator did not start" >&2; exit 1; }

# Every sendSMS API request the emulator saw: per-key counts (accepted and refused, every
# action), plus requests that matched no key and requests answered as rate-limited.
calls() {
  curl -sf "http://$http/_emulator/state" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(sum(c["accepted"] + c["refused"] for k in s["keys"] for c in k["requests"].values())
      + s["unmatched_requests"] + s["rate_limited_requests"])'
}
# utime + stime in clock ticks, and schedstat's time on CPU in nanoseconds (finer).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$side/stat"; }
cpu_ns() { awk '{print $1}' "/proc/$side/schedstat"; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
env -i PATH="$PATH" SENDSMS_USERNAME=bench SENDSMS_API_KEY=bench-key \
  SENDSMS_API_URL="http://$http/json" SENDSMS_BOOTSTRAP_BIND=127.0.0.2 \
  SENDSMS_IP_PROVIDERS="http://$http/ip#http,dns://$dns/whoami.bench?type=A#dns" \
  SENDSMS_ALLOW_NON_PUBLIC_IPS=true SENDSMS_LISTEN="127.0.0.1:$port" SENDSMS_LOG_FORMAT=json \
  "$bin" run >"$work/run.log" 2>&1 &
side=$!
t_start=$(date +%s%N)

# Ready = the first verification is done.
ready_code=none
for _ in $(seq 600); do
  ready_code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true)
  [[ $ready_code == 200 ]] && break
  sleep 0.05
done
[[ $ready_code == 200 ]] || { echo "the sidecar never became ready:" >&2; cat "$work/run.log" >&2; exit 1; }
t_ready=$(date +%s%N)
calls_at_ready=$(calls)
ticks_at_ready=$(cpu_ticks)
ns_at_ready=$(cpu_ns)
rss_at_ready=$(awk '/^VmRSS/ {print $2}' "/proc/$side/status")

sleep "$duration"

kill -0 "$side" 2>/dev/null || { echo "the sidecar exited:" >&2; cat "$work/run.log" >&2; exit 1; }
clk=$(getconf CLK_TCK)
ticks_end=$(cpu_ticks)
ns_end=$(cpu_ns)
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$side/status")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$side/status")
ready_end=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || echo none)
calls_end=$(calls)
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

sec() { awk -v n="$1" -v d="$2" 'BEGIN { printf "%.3f", n / d }'; }
echo "### \`run\` idle for ${duration} s after the first verification (poll 60 s, defaults)"
echo
echo "| figure | value |"
echo "|---|---|"
echo "| time from start to ready (first verification) | $(( (t_ready - t_start) / 1000000 )) ms (curl polls every 50 ms) |"
echo "| VmRSS at ready | ${rss_at_ready} KiB ($(sec "$rss_at_ready" 1024) MiB) |"
echo "| VmRSS after the idle period | ${rss} KiB ($(sec "$rss" 1024) MiB) |"
echo "| VmHWM (peak resident) | ${hwm} KiB ($(sec "$hwm" 1024) MiB) |"
echo "| CPU, utime+stime, whole life | $(sec "$ticks_end" "$clk") s |"
echo "| CPU, utime+stime, idle period only | $(sec "$((ticks_end - ticks_at_ready))" "$clk") s |"
echo "| CPU, schedstat, whole life | $(sec "$ns_end" 1000000000) s |"
echo "| CPU, schedstat, idle period only | $(sec "$((ns_end - ns_at_ready))" 1000000000) s |"
echo "| sendSMS calls, total | ${calls_end} |"
echo "| sendSMS calls up to the first verification | ${calls_at_ready} |"
echo "| sendSMS calls after the first verification | $((calls_end - calls_at_ready)) |"
echo "| /readyz at the end | ${ready_end} |"
echo "| load average (1/5/15 min) at start / end | ${load_start} / ${load_end} |"
