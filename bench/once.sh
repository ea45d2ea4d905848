#!/usr/bin/env bash
# Wall time of `once` (a fresh emulator each run, so every run whitelists and verifies) and of
# `detect` with two local providers, then with a third that never answers. Needs bc and
# python3. Usage: RUNS=20 bench/once.sh
set -euo pipefail
silent_port_file=$(mktemp)
cd "$(dirname "$0")/.."
cargo build --release --locked -q
bin=${BIN:-target/release/sendsms-whitelister}
runs=${RUNS:-20}
py_ms() { python3 -c "import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f'median {statistics.median(v):.1f} ms, min {min(v):.1f}, max {max(v):.1f} over {len(v)} runs')" "$@"; }
once=(); detect=(); hang=()
python3 -c 'import socket,sys,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); open(sys.argv[1],"w").write(str(s.getsockname()[1])); time.sleep(3600)' "$silent_port_file" &
silent=$!; sleep 0.3; sport=$(cat "$silent_port_file")
for i in $(seq "$runs"); do
  out=$(mktemp); "$bin" emulator --listen 127.0.0.1:0 --dns-listen 127.0.0.1:0 --username b --default-key k3y --allow 127.0.0.2 --rate-limit 0 >"$out" & emu=$!
  while [ "$(wc -l <"$out")" -lt 2 ]; do sleep 0.02; done
  http=$(sed -n 's|^listening on http://||p' "$out"); dns=$(sed -n 's|^dns listening on udp://||p' "$out")
  common=(SENDSMS_USERNAME=b SENDSMS_API_KEY=k3y SENDSMS_API_URL="http://$http/json" SENDSMS_ALLOW_NON_PUBLIC_IPS=true SENDSMS_BOOTSTRAP_BIND=127.0.0.2 SENDSMS_LOG_FORMAT=json RUST_LOG=error)
  prov="http://$http/ip#http,dns://$dns/w.test?type=A#dns"
  t0=$(date +%s%N); env -i "${common[@]}" SENDSMS_IP_PROVIDERS="$prov" "$bin" once >/dev/null; t1=$(date +%s%N)
  once+=("$(echo "($t1-$t0)/1000000" | bc -l)")
  t0=$(date +%s%N); env -i "${common[@]}" SENDSMS_IP_PROVIDERS="$prov" "$bin" detect >/dev/null; t1=$(date +%s%N)
  detect+=("$(echo "($t1-$t0)/1000000" | bc -l)")
  t0=$(date +%s%N); env -i "${common[@]}" SENDSMS_IP_PROVIDERS="$prov,dns://127.0.0.1:$sport/h.test?type=A#hang" "$bin" detect >/dev/null; t1=$(date +%s%N)
  hang+=("$(echo "($t1-$t0)/1000000" | bc -l)")
  kill $emu; rm -f "$out"
done
kill $silent
echo "once (detect, refused read, add via bastion, verify), whole process: $(py_ms "${once[@]}")"
echo "detect, quorum 2 of HTTP + DNS, whole process:                      $(py_ms "${detect[@]}")"
echo "detect, same plus a DNS provider that never answers:                $(py_ms "${hang[@]}")"
