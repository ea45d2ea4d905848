#!/usr/bin/env python3
"""A fleet behind one egress IP, started at once against the emulator with the account's real
rate limit (10 calls in any minute): time until every member is ready, sendSMS calls in all and
in the busiest minute, calls the emulator throttled.

Usage: bench/fleet.py [--size 100] [--mode redis|file|none] [--limit 600]
Needs the release binary (cargo build --release) and, for --mode redis, redis-server.
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, "target/release/sendsms-whitelister"))


def free_ports(count):
    """Distinct free ports below the kernel's ephemeral range: a port it hands out could be taken
    by one of the fleet's own outgoing connections before the member listening on it binds."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        high = int(f.read().split()[0])
    low = 10000
    port = low + os.getpid() % (high - low)
    ports = []
    for _ in range(high - low):
        port = low if port + 1 >= high else port + 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    sys.exit("not enough free ports")


def get(port, path, timeout=2.0):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    except OSError:
        return 0, ""


def wait_port(port, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def calls(state):
    total = 0
    for key in state["keys"]:
        for counts in key["requests"].values():
            total += counts["accepted"] + counts["refused"]
    return total


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--mode", choices=["redis", "file", "none"], default="redis")
    parser.add_argument("--limit", type=float, default=600, help="give up after this many seconds")
    args = parser.parse_args()

    children = []
    work = tempfile.mkdtemp(prefix="fleet-bench-")
    ports = free_ports(args.size + 2)
    try:
        coordination = "none"
        if args.mode == "redis":
            if not shutil.which("redis-server"):
                sys.exit("redis-server is not installed")
            redis_port = ports.pop()
            children.append(subprocess.Popen(
                ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_port(redis_port)
            coordination = f"redis://127.0.0.1:{redis_port}/0"
        elif args.mode == "file":
            coordination = f"file:{work}/coordination"

        api_port = ports.pop()
        emulator = subprocess.Popen(
            [BIN, "emulator", "--listen", f"127.0.0.1:{api_port}", "--dns-listen",
             f"127.0.0.1:{api_port}", "--username", "fleet", "--default-key", "fleet-key",
             "--allow", "127.0.0.2", "--rate-limit", "10"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        children.append(emulator)
        wait_port(api_port)

        env = {
            "PATH": os.environ.get("PATH", ""),
            "SENDSMS_USERNAME": "fleet",
            "SENDSMS_API_KEY": "fleet-key",
            "SENDSMS_API_URL": f"http://127.0.0.1:{api_port}/json",
            "SENDSMS_IP_PROVIDERS": f"http://127.0.0.1:{api_port}/ip#http,"
                                    f"dns://127.0.0.1:{api_port}/whoami.test?type=A#dns",
            "SENDSMS_ALLOW_NON_PUBLIC_IPS": "true",
            "SENDSMS_BOOTSTRAP_BIND": "127.0.0.2",
            "SENDSMS_COORDINATION": coordination,
            "SENDSMS_VERIFY_TIMEOUT": "120s",
            "SENDSMS_LOG_FORMAT": "json",
            "RUST_LOG": "warn",
        }
        started = time.time()
        ports = ports[: args.size]
        logs = {}
        for port in ports:
            logs[port] = open(f"{work}/member-{port}.log", "wb")
            children.append(subprocess.Popen(
                [BIN, "run"], env={**env, "SENDSMS_LISTEN": f"127.0.0.1:{port}", "RUST_LOG": "info"},
                stdout=logs[port], stderr=subprocess.STDOUT))

        ready_at = {}
        samples = []  # (seconds since start, sendSMS calls so far)
        with ThreadPoolExecutor(max_workers=16) as pool:
            while len(ready_at) < args.size and time.time() - started < args.limit:
                waiting = [p for p in ports if p not in ready_at]
                for port, (code, _) in zip(waiting, pool.map(lambda p: get(p, "/readyz"), waiting)):
                    if code == 200:
                        ready_at[port] = time.time() - started
                _, body = get(api_port, "/_emulator/state")
                if body:
                    samples.append((time.time() - started, calls(json.loads(body))))
                time.sleep(0.25)
        _, body = get(api_port, "/_emulator/state")
        state = json.loads(body)
        total = calls(state)
        busiest = 0
        for i, (t0, c0) in enumerate(samples):
            later = [c for t, c in samples[i:] if t - t0 <= 60]
            busiest = max(busiest, max(later) - c0 if later else 0)
        busiest = max(busiest, samples[0][1] if samples else 0)
        result = {
            "mode": args.mode,
            "size": args.size,
            "ready": len(ready_at),
            "all_ready_seconds": round(max(ready_at.values()), 2) if len(ready_at) == args.size else None,
            "median_ready_seconds": round(sorted(ready_at.values())[len(ready_at) // 2], 2) if ready_at else None,
            "gave_up_after_seconds": None if len(ready_at) == args.size else args.limit,
            "sendsms_calls": total,
            "busiest_minute_calls": busiest,
            "throttled_calls": state.get("rate_limited_requests"),
        }
        print(json.dumps(result))
        for port in ports:
            if port not in ready_at:
                with open(f"{work}/member-{port}.log", "rb") as log:
                    tail = log.read().decode(errors="replace").splitlines()[-6:]
                print(f"member on port {port} never ready; its last lines:", *tail, sep="\n  ",
                      file=sys.stderr)
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
