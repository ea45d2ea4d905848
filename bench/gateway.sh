#!/usr/bin/env bash
# The gateway's cost, side by side with what a user would build instead: at each emulator
# latency L (0 and 20 ms, `emulator --latency`), `message_send` called
#   direct   - straight at the emulator, the credentials in the query string;
#   nginx    - through Debian's nginx, `proxy_pass` adding the credentials (keep-alive upstream);
#   gateway  - through `run`'s gateway (SENDSMS_GATEWAY_LISTEN), the app sending none.
# For each: p50 and p99 latency with one client (wrk -t1 -c1), the added latency against
# direct, and the throughput with 64 concurrent clients (wrk -t2 -c64); ROUNDS rounds (default
# 3) take the three paths in turn, and each figure is the median of its rounds, so a burst of
# load from elsewhere on the machine does not land on one path only. Then the resident
# memory of `run` with 1,000 calls held at once (the key cannot be whitelisted, so every call
# waits out SENDSMS_GATEWAY_HOLD). Prints a markdown report; progress goes to stderr.
# Installs nginx and wrk with apt-get when missing (needs root then). Everything is loopback.
# Usage: bench/gateway.sh    (SECONDS_PER_RUN, default 5; ROUNDS, default 3; BIN skips the build)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${SECONDS_PER_RUN:-5}
rounds=${ROUNDS:-3}
target_dir=${CARGO_TARGET_DIR:-target}
for tool in nginx wrk; do
  if ! command -v "$tool" >/dev/null && ! [[ -x /usr/sbin/$tool ]]; then
    echo "gateway bench: installing nginx and wrk" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx wrk >&2
  fi
done
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [[ -f $work/nginx.pid ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# A held call and its connection each take a descriptor: 1,000 of them, twice over.
ulimit -n 8192

if [[ -z ${BIN:-} ]]; then
  echo "gateway bench: building the release binary" >&2
  cargo build --release --locked -q
fi
# A copy: another build in the same target directory must not swap it mid-run.
cp "${BIN:-$target_dir/release/sendsms-whitelister}" "$work/bin"
bin=$work/bin
user=bench key=bench-key-0f3a9c51e2d84b67

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# emulator NAME FLAGS...: starts one, sets $http and $dns.
emulator() {
  local name=$1; shift
  "$bin" emulator --listen 127.0.0.1:0 --dns-listen 127.0.0.1:0 --username "$user" \
    --default-key "$key" --rate-limit 0 "$@" >"$work/$name.out" 2>/dev/null &
  pids+=($!)
  for _ in $(seq 100); do [[ $(wc -l <"$work/$name.out") -ge 2 ]] && break; sleep 0.05; done
  http=$(sed -n 's|^listening on http://||p' "$work/$name.out")
  dns=$(sed -n 's|^dns listening on udp://||p' "$work/$name.out")
  [[ -n $http && -n $dns ]] || { echo "the emulator did not start" >&2; exit 1; }
}

# sidecar NAME STATUS_PORT GATEWAY_PORT EXTRA_ENV...: `run` with the gateway; sets $side.
sidecar() {
  local name=$1 status=$2 gateway=$3; shift 3
  env -i PATH="$PATH" SENDSMS_USERNAME=$user SENDSMS_API_KEY=$key \
    SENDSMS_API_URL="http://$http/json" SENDSMS_BOOTSTRAP_BIND=127.0.0.2 \
    SENDSMS_IP_PROVIDERS="http://$http/ip#http,dns://$dns/whoami.bench?type=A#dns" \
    SENDSMS_ALLOW_NON_PUBLIC_IPS=true SENDSMS_LISTEN="127.0.0.1:$status" \
    SENDSMS_GATEWAY_LISTEN="127.0.0.1:$gateway" SENDSMS_LOG_FORMAT=json "$@" \
    "$bin" run >"$work/$name.log" 2>&1 &
  side=$!
  pids+=("$side")
}

wait_code() { # URL CODE
  for _ in $(seq 400); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' "$1" || true) == "$2" ]] && return 0
    sleep 0.05
  done
  echo "$1 never answered $2" >&2
  exit 1
}

# wrk's p50 and p99 (in ms) and requests per second.
measure() { # URL CONNECTIONS THREADS
  wrk -t"$3" -c"$2" -d"${seconds}s" --timeout 30s --latency "$1" | python3 -c '
import re, sys
text = sys.stdin.read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
p = dict((q, ms(v, u)) for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", text)
if errors:
    sys.exit("wrk saw errors:\n" + text)
p50, p99 = p["50"], p["99"]
print(f"{p50:.3f} {p99:.3f} {rps:.0f}")'
}

nginx_conf() { # UPSTREAM PORT
  cat >"$work/nginx.conf" <<EOF
worker_processes auto;
pid $work/nginx.pid;
error_log $work/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream api { server $1; keepalive 64; }
  server {
    listen 127.0.0.1:$2;
    location = /json {
      proxy_pass http://api/json?\$args&username=$user&password=$key;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
}

query='action=message_send&to=0722000000&text=bench'
rows=()
for latency in 0 20; do
  echo "gateway bench: L = $latency ms" >&2
  emulator "emu$latency" --latency "$latency" --allow 127.0.0.1 --allow 127.0.0.2
  status=$(free_port) gateway=$(free_port) nginx_port=$(free_port)
  sidecar "run$latency" "$status" "$gateway"
  wait_code "http://127.0.0.1:$status/readyz" 200
  nginx_conf "$http" "$nginx_port"
  "$nginx_bin" -c "$work/nginx.conf" -p "$work" -g 'daemon on;'
  wait_code "http://127.0.0.1:$nginx_port/json?$query" 200
  for round in $(seq "$rounds"); do
    for path in direct nginx gateway; do
      case $path in
        direct) url="http://$http/json?$query&username=$user&password=$key" ;;
        nginx) url="http://127.0.0.1:$nginx_port/json?$query" ;;
        gateway) url="http://127.0.0.1:$gateway/json?$query" ;;
      esac
      echo "gateway bench:   round $round, $path" >&2
      read -r p50 p99 _ < <(measure "$url" 1 1)
      read -r _ _ rps < <(measure "$url" 64 2)
      rows+=("$latency $path $p50 $p99 $rps")
    done
  done
  kill "$(cat "$work/nginx.pid")"; rm -f "$work/nginx.pid"
  grep -q '"level":"WARN"\|"level":"ERROR"' "$work/run$latency.log" &&
    { echo "the sidecar warned:" >&2; cat "$work/run$latency.log" >&2; }
  if grep -q "$key" "$work/run$latency.log"; then echo "the key is in the log" >&2; exit 1; fi
done

echo "gateway bench: 1,000 calls held" >&2
# The key cannot be whitelisted (the bastion is not on it either): `run` never gets ready,
# and every gateway call waits for the whole hold.
emulator held --latency 0
status=$(free_port) gateway=$(free_port)
sidecar held "$status" "$gateway" SENDSMS_GATEWAY_HOLD=120s SENDSMS_GATEWAY_MAX_HELD=1000
wait_code "http://127.0.0.1:$status/healthz" 200
sleep 1
rss_idle=$(awk '/^VmRSS/ {print $2}' "/proc/$side/status")
wrk -t2 -c1000 -d60s --timeout 120s "http://127.0.0.1:$gateway/json?$query" >/dev/null 2>&1 &
pids+=($!)
held=0
for _ in $(seq 600); do
  held=$(curl -sf "http://127.0.0.1:$status/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["gateway"]["held_calls"])')
  [[ $held -ge 1000 ]] && break
  sleep 0.1
done
sleep 1
held=$(curl -sf "http://127.0.0.1:$status/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["gateway"]["held_calls"])')
rss_held=$(awk '/^VmRSS/ {print $2}' "/proc/$side/status")
hwm_held=$(awk '/^VmHWM/ {print $2}' "/proc/$side/status")
sends=$(curl -sf "http://$http/_emulator/state" | python3 -c 'import json,sys; print(json.load(sys.stdin)["messages_total"])')

mem_kib=$(awk '/^MemTotal/ {print $2}' /proc/meminfo)
cpu_model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
printf '%s\n' "${rows[@]}" | python3 -c '
import statistics, sys
rows = [line.split() for line in sys.stdin.read().splitlines()]
runs = {}
for l, p, a, b, r in rows:
    runs.setdefault((l, p), []).append((float(a), float(b), float(r)))
data = {k: tuple(statistics.median(x[i] for x in v) for i in range(3)) for k, v in runs.items()}
print("| L (ms) | path | p50 (ms) | p99 (ms) | p50 added (ms) | p99 added (ms) | requests/s, 64 clients | requests/s, each round |")
print("|---|---|---|---|---|---|---|---|")
for (l, p) in data:
    p50, p99, rps = data[(l, p)]
    d50, d99, _ = data[(l, "direct")]
    added = "-" if p == "direct" else f"{p50 - d50:+.3f}"
    added99 = "-" if p == "direct" else f"{p99 - d99:+.3f}"
    each = ", ".join(f"{x[2]:.0f}" for x in runs[(l, p)])
    print(f"| {l} | {p} | {p50:.3f} | {p99:.3f} | {added} | {added99} | {rps:.0f} | {each} |")
print()
print("| target | L (ms) | gateway | nginx | met? |")
print("|---|---|---|---|---|")
for l in sorted({l for l, _ in data}, key=int):
    g, n, d = data[(l, "gateway")], data[(l, "nginx")], data[(l, "direct")]
    over_g, over_n = g[0] - d[0], n[0] - d[0]
    ok = "yes" if over_g <= over_n + 0.2 else "no"
    print(f"| p50 added <= nginx + 0.2 ms | {l} | {over_g:+.3f} ms | {over_n:+.3f} ms | {ok} |")
    ratio = g[2] / n[2]
    ok = "yes" if ratio >= 0.8 else "no"
    print(f"| throughput >= 0.8 x nginx | {l} | {g[2]:.0f}/s ({ratio:.2f} x) | {n[2]:.0f}/s | {ok} |")
'
echo "| resident memory < 32 MiB with 1,000 calls held | - | VmRSS $rss_held KiB ($(awk -v k="$rss_held" 'BEGIN { printf "%.1f", k / 1024 }') MiB) with $held held; $rss_idle KiB idle; VmHWM $hwm_held KiB | - | $([[ $held -ge 1000 && $rss_held -lt 32768 ]] && echo yes || echo no) |"
echo
echo "Medians of $rounds rounds of ${seconds} s per figure. Machine: ${cpu_model:-unknown}, $(nproc) cores, $(awk -v k="$mem_kib" 'BEGIN { printf "%.1f GiB", k / 1048576 }'), $(uname -sr); nginx $("$nginx_bin" -v 2>&1 | sed 's|.*/||'), wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'); commit $(git rev-parse --short HEAD); $(date -u +%Y-%m-%dT%H:%MZ); load at the end $(cut -d' ' -f1-3 /proc/loadavg). Sends that reached the API while 1,000 were held: $sends."
