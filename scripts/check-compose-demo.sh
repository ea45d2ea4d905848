#!/usr/bin/env bash
# Replay examples/compose/compose.demo.yaml without a Docker engine (run as root): the
# emulator, the tinyproxy bastion and the sidecar each get a network namespace of their own
# on one bridge, with the addresses, arguments, proxy config and environment that the
# compose file gives them (service names resolved to those addresses). The sidecar must
# then whitelist its address through the bastion and verify it: once with `once`, and once
# more, against a fresh emulator, with `run` until the compose healthcheck (`health`) passes,
# as in `docker compose -f compose.demo.yaml up`.
#
#   sudo scripts/check-compose-demo.sh [BINARY]   # default: the static release build
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/release/sendsms-whitelister}
[[ $(id -u) -eq 0 ]] || { echo "run as root (network namespaces need it)" >&2; exit 1; }
[[ -x $bin ]] || { echo "no binary at $bin: build it first (scripts/check-image-recipe.sh)" >&2; exit 1; }
bin=$(readlink -f "$bin")
command -v tinyproxy >/dev/null || { apt-get update -qq && apt-get install -y -qq tinyproxy >/dev/null; }
python3 -c 'import yaml' 2>/dev/null || python3 -m pip install --quiet pyyaml

work=$(mktemp -d)
id=$$
ns_switch=demo-sw-$id ns_emulator=demo-emu-$id ns_bastion=demo-bas-$id ns_sidecar=demo-side-$id
cleanup() {
  local pids
  for ns in $ns_emulator $ns_bastion $ns_sidecar $ns_switch; do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [[ -z $pids ]] || kill $pids 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# What the compose file says, as shell assignments.
eval "$(python3 - "$root/examples/compose" "$work" <<'PY'
import ipaddress, re, shlex, sys, yaml
from pathlib import Path

compose_dir, work = Path(sys.argv[1]), Path(sys.argv[2])
doc = yaml.safe_load((compose_dir / "compose.demo.yaml").read_text())
s = doc["services"]
ipam = doc["networks"]["demo"]["ipam"]["config"][0]
subnet, dynamic = ipaddress.ip_network(ipam["subnet"]), ipaddress.ip_network(ipam["ip_range"])
hosts = {
    "bastion": s["bastion"]["networks"]["demo"]["ipv4_address"],
    # Services without a fixed address get one from ip_range, as Docker would.
    "emulator": str(next(dynamic.hosts())),
    "whitelister": str(list(dynamic.hosts())[1]),
}
def resolve(value: str) -> str:
    return re.sub(r"(?<=//)(emulator|bastion)(?=:)", lambda m: hosts[m[1]], value)

env = dict(s["whitelister"]["environment"])
secret = doc["secrets"]["sendsms_api_key"]["file"]
assert env["SENDSMS_API_KEY_FILE"] == "/run/secrets/sendsms_api_key"
env["SENDSMS_API_KEY_FILE"] = str((compose_dir / secret).resolve())
(work / "tinyproxy.conf").write_text(doc["configs"]["tinyproxy"]["content"])
print(f"prefix={subnet.prefixlen}")
for name, ip in hosts.items():
    print(f"ip_{name}={shlex.quote(ip)}")
print("emulator_args=(" + " ".join(shlex.quote(a) for a in s["emulator"]["command"]) + ")")
print("sidecar_env=(" + " ".join(shlex.quote(f"{k}={resolve(str(v))}") for k, v in env.items()) + ")")
PY
)"

echo "=== network: $ip_emulator emulator, $ip_bastion bastion, $ip_whitelister sidecar (/$prefix)"
ip netns add "$ns_switch"
ip -n "$ns_switch" link add br0 type bridge
ip -n "$ns_switch" link set br0 up
for node in emulator bastion sidecar; do
  ns_var=ns_$node ip_var=ip_$node
  [[ $node == sidecar ]] && ip_var=ip_whitelister
  ip netns add "${!ns_var}"
  ip -n "$ns_switch" link add "to-$node" type veth peer name eth0 netns "${!ns_var}"
  ip -n "$ns_switch" link set "to-$node" master br0 up
  ip -n "${!ns_var}" link set lo up
  ip -n "${!ns_var}" addr add "${!ip_var}/$prefix" dev eth0
  ip -n "${!ns_var}" link set eth0 up
done

echo "=== emulator: sendsms-whitelister ${emulator_args[*]}"
ip netns exec "$ns_emulator" "$bin" "${emulator_args[@]}" >"$work/emulator.log" 2>&1 &
echo "=== bastion: tinyproxy with the compose file's config"
ip netns exec "$ns_bastion" tinyproxy -d -c "$work/tinyproxy.conf" >"$work/tinyproxy.log" 2>&1 &
port=$(printf '%s\n' "${emulator_args[@]}" | sed -n 's/^--listen=.*://p')
for _ in $(seq 50); do
  if ip netns exec "$ns_sidecar" bash -c "exec 3<>/dev/tcp/$ip_emulator/$port" 2>/dev/null \
    && ip netns exec "$ns_sidecar" bash -c "exec 3<>/dev/tcp/$ip_bastion/8888" 2>/dev/null; then break; fi
  sleep 0.2
done

echo "=== sidecar: \`once\` with the compose file's environment"
printf '  %s\n' "${sidecar_env[@]}"
rc=0
ip netns exec "$ns_sidecar" env -i "${sidecar_env[@]}" timeout 120 "$bin" once || rc=$?
if [[ $rc -ne 0 ]]; then
  echo "--- emulator log"; tail -n 30 "$work/emulator.log"
  echo "--- tinyproxy log"; tail -n 30 "$work/tinyproxy.log"
  echo "compose demo: FAIL (once exited $rc)"
  exit 1
fi
grep -q "CONNECT\|GET http://$ip_emulator" "$work/tinyproxy.log" ||
  { echo "compose demo: FAIL (nothing went through the bastion)"; cat "$work/tinyproxy.log"; exit 1; }

echo "=== sidecar: \`run\` against a fresh emulator, until the compose healthcheck passes"
kill $(ip netns pids "$ns_emulator")
sleep 0.5
ip netns exec "$ns_emulator" "$bin" "${emulator_args[@]}" >"$work/emulator.log" 2>&1 &
sleep 0.5
ip netns exec "$ns_sidecar" env -i "${sidecar_env[@]}" "$bin" run >"$work/run.log" 2>&1 &
run_pid=$!
healthy=""
for _ in $(seq 150); do
  kill -0 $run_pid 2>/dev/null || break
  # The compose healthcheck: `sendsms-whitelister health` in the sidecar's namespace.
  if ip netns exec "$ns_sidecar" "$bin" health >/dev/null 2>&1; then healthy=yes; break; fi
  sleep 0.4
done
if [[ -z $healthy ]]; then
  echo "--- run log"; tail -n 30 "$work/run.log"
  echo "compose demo: FAIL (\`run\` never turned healthy)"
  exit 1
fi
echo "compose demo: PASS ($ip_whitelister whitelisted through the bastion $ip_bastion and verified, by \`once\` and by \`run\`)"
