#!/usr/bin/env bash
# Idle footprint of `run`: resident memory and CPU time after DURATION seconds (default 600)
# of following an unchanged egress IP with the default poll interval, against the emulator on
# loopback. Usage: bench/idle.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-600}"
cargo build --release --locked -q
bin=target/release/sendsms-whitelister
work=$(mktemp -d)
cleanup() { kill "$emu" "$side" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$bin" emulator --listen 127.0.0.1:0 --dns-listen 127.0.0.1:0 --username bench \
  --default-key bench-key --allow 127.0.0.2 --rate-limit 0 >"$work/emu.out" 2>/dev/null &
emu=$!
for _ in $(seq 50); do [ "$(wc -l <"$work/emu.out")" -ge 2 ] && break; sleep 0.1; done
http=$(sed -n 's|^listening on http://||p' "$work/emu.out")
dns=$(sed -n 's|^dns listening on udp://||p' "$work/emu.out")

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
env -i PATH="$PATH" SENDSMS_USERNAME=bench SENDSMS_API_KEY=bench-key \
  SENDSMS_API_URL="http://$http/json" SENDSMS_BOOTSTRAP_BIND=127.0.0.2 \
  SENDSMS_IP_PROVIDERS="http://$http/ip#http,dns://$dns/whoami.bench?type=A#dns" \
  SENDSMS_ALLOW_NON_PUBLIC_IPS=true SENDSMS_LISTEN="127.0.0.1:$port" SENDSMS_LOG_FORMAT=json \
  "$bin" run >"$work/run.log" 2>&1 &
side=$!
sleep "$duration"

clk=$(getconf CLK_TCK)
read -r utime stime < <(awk '{print $14, $15}' "/proc/$side/stat")
# schedstat's first field is the time on CPU in nanoseconds: finer than the clock ticks above.
cpu_ns=$(awk '{print $1}' "/proc/$side/schedstat")
rss=$(awk '/^VmRSS/ {print $2}' "/proc/$side/status")
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$side/status")
ready=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || echo none)
calls=$(curl -s "http://$http/_emulator/state" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sum(c["accepted"]+c["refused"] for c in s["keys"][0]["requests"].values()))')
echo "idle run for ${duration}s (poll 60s, default settings):"
echo "  resident memory: ${rss} KiB (peak ${hwm} KiB)"
echo "  CPU time: $(( cpu_ns / 1000 )) µs on CPU (schedstat); ticks: user $(( utime * 1000 / clk )) ms, system $(( stime * 1000 / clk )) ms"
echo "  /readyz: ${ready}; sendSMS calls made: ${calls}"
echo "  binary: $(stat -c %s "$bin") bytes"
