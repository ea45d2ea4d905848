#!/usr/bin/env python3
"""Checks on the packaging that need no Docker engine and no cluster.

    packaging_checks.py dockerfile
    packaging_checks.py helm HELM_BINARY
    packaging_checks.py compose
    packaging_checks.py workflows ACTIONLINT

Run by scripts/check-packaging.sh, which installs the Python packages used here
(pyyaml, kubernetes-validate, compose-spec). Each check prints PASS or FAIL; the exit
status is the number of failed checks (capped at 100).
"""

from __future__ import annotations

import atexit
import ipaddress
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "sendsms-whitelister"
CONSUMER = ROOT / "helm" / "tests" / "consumer"
COMPOSE = ROOT / "examples" / "compose"
BINARY_IN_IMAGE = "/usr/local/bin/sendsms-whitelister"
SIDECAR_UID = 65532
STATUS_PORT = 9797
GATEWAY_PORT = 9798
# What .github/workflows/release.yml publishes, and so the chart's and compose files' default.
PUBLISHED_IMAGE = "ghcr.io/sendsms-whitelister/sendsms-whitelister"

results: list[tuple[bool, str]] = []


class CheckFailed(Exception):
    pass


def require(cond: object, message: str) -> None:
    if not cond:
        raise CheckFailed(message)


def check(name: str):
    """Run the decorated function now as one named check and record PASS/FAIL."""

    def run(fn):
        try:
            detail = fn()
            results.append((True, name))
            print(f"PASS  {name}" + (f": {detail}" if detail else ""), flush=True)
        except CheckFailed as e:
            results.append((False, name))
            print(f"FAIL  {name}: {e}", flush=True)
        except Exception as e:  # noqa: BLE001 - a crash is a failure of this check
            results.append((False, name))
            print(f"FAIL  {name}: {type(e).__name__}: {e}", flush=True)
        return fn

    return run


def summary(label: str) -> int:
    """Print how many checks passed and failed; the exit code: the failures, at most 100."""
    failed = sum(1 for ok, _ in results if not ok)
    print(f"{label}: {len(results) - failed} passed, {failed} failed")
    return min(failed, 100)


# --------------------------------------------------------------------------------------
# Dockerfile


def cmd_dockerfile() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = text.splitlines()

    @check("Dockerfile: every hadolint ignore is justified by the comment line above it")
    def _():
        ignores = [i for i, l in enumerate(lines) if re.match(r"\s*#\s*hadolint\s+ignore=", l)]
        for i in ignores:
            prev = lines[i - 1].strip() if i else ""
            require(
                prev.startswith("#") and "hadolint" not in prev and len(prev) > 10,
                f"line {i + 1}: '{lines[i].strip()}' has no justifying comment above it",
            )
        return f"{len(ignores)} ignore(s)"

    @check("Dockerfile: distroless nonroot base, numeric USER, exec-form ENTRYPOINT/CMD/HEALTHCHECK")
    def _():
        stages = re.findall(r"^FROM\s+(?:--platform=\S+\s+)?(\S+)", text, re.M)
        require(stages and stages[-1] == "gcr.io/distroless/static-debian13:nonroot", f"final stage is {stages[-1:]}")
        require(re.search(r"^FROM\s+(?:--platform=\S+\s+)?rust:\d+\.\d+\.\d+-\S+ AS builder$", text, re.M),
                "builder stage must be a pinned rust:X.Y.Z-... image")
        require(re.search(r"^USER 65532:65532$", text, re.M), "USER 65532:65532 missing")
        require(re.search(rf'^ENTRYPOINT \["{BINARY_IN_IMAGE}"\]$', text, re.M), "exec-form ENTRYPOINT missing")
        require(re.search(r'^CMD \["run"\]$', text, re.M), 'CMD ["run"] missing')
        require(re.search(r"^EXPOSE 9797 9798$", text, re.M), "EXPOSE 9797 9798 (status, gateway) missing")
        require(re.search(rf'CMD \["{BINARY_IN_IMAGE}", "health"\]', text), "exec-form HEALTHCHECK calling health missing")
        require(re.search(rf"^COPY --from=builder \S+ {BINARY_IN_IMAGE}$", text, re.M), "binary not copied to " + BINARY_IN_IMAGE)

    @check("Dockerfile: multi-arch, the builder on $BUILDPLATFORM cross-compiling for $TARGETARCH")
    def _():
        froms = re.findall(r"^FROM\s+(.*)$", text, re.M)
        require(froms[0].startswith("--platform=$BUILDPLATFORM "), f"builder: FROM {froms[0]}")
        require(not froms[-1].startswith("--platform"), f"the final stage must be the target platform's: FROM {froms[-1]}")
        require(re.search(r"^ARG TARGETARCH$", text, re.M), "ARG TARGETARCH missing")
        require("DL3029" not in text, "no platform pin may need a hadolint ignore")
        return "linux/amd64, linux/arm64 (scripts/check-image-recipe.sh replays both)"

    @check("Dockerfile: OCI labels, and its VERSION matches Cargo.toml and Chart.yaml appVersion")
    def _():
        for label in ("title", "description", "version", "revision", "licenses", "source"):
            require(f"org.opencontainers.image.{label}=" in text, f"label org.opencontainers.image.{label} missing")
        version = re.search(r"^ARG VERSION=(\S+)$", text, re.M)
        require(version, "ARG VERSION=... missing")
        cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        require(version[1] == cargo == chart["appVersion"],
                f"Dockerfile {version[1]}, Cargo.toml {cargo}, Chart appVersion {chart['appVersion']}")
        return f"version {cargo}"

    @check(".dockerignore: sends only what the Dockerfile COPYs (Cargo.toml, Cargo.lock, src/, the build script)")
    def _():
        rules = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                 if l.strip() and not l.startswith("#")]
        require(rules[0] == "*", "must start by excluding everything")
        copied = set(re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M))
        sources = {p.rstrip("/") for line in copied for p in line.split()}
        allowed = {r[1:].rstrip("/") for r in rules[1:] if r.startswith("!")}
        require(sources <= allowed, f"COPY needs {sorted(sources - allowed)} which .dockerignore excludes")
        for path in sorted(sources):
            require((ROOT / path).exists(), f"{path} (copied by the Dockerfile) does not exist")


# --------------------------------------------------------------------------------------
# Helm


def validate_manifest(doc: dict, versions: list[str], label: str) -> None:
    """kubernetes-validate --strict against each Kubernetes version; a missing schema fails too."""
    import kubernetes_validate as kv

    for v in versions:
        try:
            kv.validate(doc, v, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            raise CheckFailed(f"{label} invalid against {v}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:
            raise CheckFailed(f"no schema, not validated: {e.message}")


def all_pod_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec") or {}
    if doc["kind"] == "Pod":
        return [spec]
    if doc["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if "template" in spec and "spec" in spec["template"]:
        return [spec["template"]["spec"]]
    return []


def env_map(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def assert_never_root(pod: dict, where: str) -> None:
    psc = pod.get("securityContext") or {}
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        sc = c.get("securityContext") or {}
        non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        require(non_root is True, f"{where}: container {c['name']} may run as root (runAsNonRoot not true)")
        require(uid is None or uid != 0, f"{where}: container {c['name']} runs as uid 0")
        require(sc.get("privileged") is not True, f"{where}: container {c['name']} is privileged")


def assert_sidecar_container(c: dict, args: list[str], values: dict, where: str) -> None:
    sc = c.get("securityContext") or {}
    require(c["args"] == args, f"{where}: {c['name']} args {c['args']}, expected {args}")
    uid = values.get("uid", SIDECAR_UID)  # None: left to the platform (OpenShift)
    require(sc.get("runAsUser") == uid, f"{where}: {c['name']} runAsUser {sc.get('runAsUser')}, expected {uid}")
    require(sc.get("runAsNonRoot") is True, f"{where}: {c['name']} runAsNonRoot not true")
    require(sc.get("readOnlyRootFilesystem") is True, f"{where}: {c['name']} root filesystem writable")
    require(sc.get("allowPrivilegeEscalation") is False, f"{where}: {c['name']} allowPrivilegeEscalation")
    require(sc.get("capabilities", {}).get("drop") == ["ALL"] and "add" not in sc.get("capabilities", {}),
            f"{where}: {c['name']} capabilities {sc.get('capabilities')}")
    require(sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: {c['name']} seccomp")
    require(c.get("resources", {}).get("requests") and c["resources"].get("limits", {}).get("memory"),
            f"{where}: {c['name']} lacks requests or a memory limit")
    env = env_map(c)
    for var, key in (("SENDSMS_USERNAME", values["usernameKey"]), ("SENDSMS_API_KEY", values["apiKeyKey"])):
        ref = env.get(var, {}).get("valueFrom", {}).get("secretKeyRef", {})
        require(ref.get("name") == values["secret"] and ref.get("key") == key,
                f"{where}: {c['name']} {var} not from Secret {values['secret']}/{key}: {ref}")
    require(not any("value" in e and re.search(r"KEY|PASSWORD", n) and not n.endswith("_FILE") for n, e in env.items()),
            f"{where}: {c['name']} has a credential as a literal env value")
    require(c["image"] == values["image"], f"{where}: image {c['image']}, expected {values['image']}")


def assert_pod(pod: dict, native: bool, values: dict, where: str) -> str:
    name = values["name"]
    inits = {c["name"]: c for c in pod.get("initContainers", [])}
    conts = {c["name"]: c for c in pod.get("containers", [])}
    assert_never_root(pod, where)
    if native:
        side = inits.get(name)
        require(side, f"{where}: no native sidecar {name} in initContainers")
        require(pod["initContainers"][0]["name"] == name, f"{where}: the native sidecar must be the first init container")
        require(side.get("restartPolicy") == "Always", f"{where}: native sidecar lacks restartPolicy: Always")
        probe = side.get("startupProbe", {}).get("httpGet", {})
        require(probe.get("path") == "/readyz" and probe.get("port") == STATUS_PORT,
                f"{where}: native sidecar startupProbe is {side.get('startupProbe')}")
        sp = side["startupProbe"]
        require(sp["periodSeconds"] * sp["failureThreshold"] > 120, f"{where}: startup budget below the verify timeout")
        require(name not in conts, f"{where}: native mode must not add a regular sidecar container")
        assert_sidecar_container(side, ["run"], values, where)
        run = side
    else:
        init = inits.get(f"{name}-init")
        require(init, f"{where}: no init container {name}-init")
        require("restartPolicy" not in init, f"{where}: the fallback init container must not set restartPolicy")
        assert_sidecar_container(init, ["once"], values, where)
        run = conts.get(name)
        require(run, f"{where}: no sidecar container {name} in containers")
        require(all(c.get("restartPolicy") is None for c in pod.get("initContainers", [])),
                f"{where}: fallback mode renders a native sidecar")
        assert_sidecar_container(run, ["run"], values, where)
    if values.get("readiness", True):
        rp = run.get("readinessProbe", {}).get("httpGet", {})
        require(rp.get("path") == "/readyz" and rp.get("port") == STATUS_PORT, f"{where}: readinessProbe is {rp}")
    else:
        require("readinessProbe" not in run, f"{where}: readinessProbe rendered although disabled")
    ports = [p["containerPort"] for p in run.get("ports", [])]
    require(ports == [STATUS_PORT] + ([GATEWAY_PORT] if values.get("gateway") else []), f"{where}: ports {ports}")
    listen = env_map(run).get("SENDSMS_LISTEN", {}).get("value")
    require(listen == f"[::]:{STATUS_PORT}", f"{where}: SENDSMS_LISTEN {listen}, expected dual-stack [::]:{STATUS_PORT}")
    mounts = {m["name"]: m["mountPath"] for m in run.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    state = env_map(run).get("SENDSMS_STATE_FILE", {}).get("value")
    if values.get("stateFile", True):
        vol = "sendsms-whitelister-state"
        require(vol in mounts and vol in volumes and "emptyDir" in volumes[vol],
                f"{where}: state emptyDir not mounted ({mounts}, {list(volumes)})")
        require(state and state.startswith(mounts[vol] + "/"), f"{where}: SENDSMS_STATE_FILE {state} not on the volume")
    else:
        require(state is None and "sendsms-whitelister-state" not in volumes, f"{where}: state file rendered although disabled")
    return "native sidecar" if native else "init `once` + sidecar `run`"


# The app's own pod annotations in helm/tests/consumer/values.yaml: they must reach the pod
# unchanged, the sidecar's prometheus.io/* must not replace them.
CONSUMER_ANNOTATIONS = {"prometheus.io/scrape": "true", "prometheus.io/port": "8080",
                        "prometheus.io/path": "/actuator/prometheus", "example.com/team": "notifications"}


def cmd_helm(helm: str) -> None:
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    app_version = chart_meta["appVersion"]
    work = Path(tempfile.mkdtemp(prefix="helm-check-"))
    atexit.register(shutil.rmtree, work, True)
    out_dir = ROOT / ".cache" / "packaging" / "rendered"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    shutil.copytree(ROOT / "helm", work / "helm")
    consumer = work / "helm" / "tests" / "consumer"

    def run_helm(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([helm, *args], capture_output=True, text=True)

    import kubernetes_validate as kv

    @check("kubernetes-validate canary: it rejects an invalid manifest (the validator is live, not skipping)")
    def _():
        bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
               "spec": {"selector": {"matchLabels": {"a": "b"}},
                        "template": {"metadata": {"labels": {"a": "b"}},
                                     "spec": {"containers": [{"name": "c", "image": "i", "bogusField": 1}]}}}}
        try:
            kv.validate(bad, "1.33.0", strict=True)
        except kv.ValidationError:
            pass
        else:
            raise CheckFailed("an unknown container field passed strict validation")
        good = {**bad, "spec": {**bad["spec"], "template": {**bad["spec"]["template"],
                "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
        return f"valid manifest passes against {kv.validate(good, '1.33.0', strict=True)}"

    def validate_docs(docs: list[dict], versions: list[str]) -> list[str]:
        seen = []
        for doc in docs:
            kind = doc["kind"]
            if kind == "ServiceMonitor":
                # A prometheus-operator CRD: kubernetes-validate has no schema for it.
                spec = doc["spec"]
                require(doc["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
                require(spec["selector"]["matchLabels"] and spec["endpoints"][0]["port"], "ServiceMonitor spec")
                seen.append(f"{kind} (CRD, structural check)")
                continue
            validate_manifest(doc, versions, f"{kind}/{doc['metadata']['name']}")
            seen.append(f"{kind}/{doc['metadata']['name']}")
        return seen

    def labels_ok(doc: dict) -> None:
        labels = doc["metadata"].get("labels", {})
        for key in ("helm.sh/chart", "app.kubernetes.io/name", "app.kubernetes.io/instance",
                    "app.kubernetes.io/version", "app.kubernetes.io/managed-by"):
            require(key in labels, f"{doc['kind']}/{doc['metadata']['name']} lacks label {key}")

    image_default = f"{PUBLISHED_IMAGE}:{app_version}"
    base = {"name": "sendsms-whitelister", "secret": "sendsms-credentials",
            "usernameKey": "username", "apiKeyKey": "apiKey", "image": image_default}

    # name, chart, kube version rendered for, versions validated against, --set values,
    # expected mode (None: no pod), expected values, expected kinds
    scenarios = [
        ("chart, default values", CHART, "1.33.0", ["1.33.0"], [], None, base, []),
        ("chart, example, native sidecar", CHART, "1.33.0", ["1.29.0", "1.33.0", kv.latest_version()],
         ["example.enabled=true"], True, base, ["Deployment"]),
        ("chart, example, native off (fallback)", CHART, "1.25.0", ["1.25.0", "1.33.0"],
         ["example.enabled=true", "sidecar.native=false"], False, base, ["Deployment"]),
        ("chart, example, native, every option on", CHART, "1.33.0", ["1.29.0", "1.33.0"],
         ["example.enabled=true", "metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom",
          "image.registry=registry.example.com/platform", "image.tag=1.2.3",
          "image.digest=sha256:" + "ab" * 32, "config.bootstrapProxy=socks5://10.0.0.1:1080",
          "config.bootstrapBind=10.1.0.5", "config.ipProviders={https://a.example/ip,https://b.example/ip}",
          "credentials.existingSecret=other", "credentials.apiKeyKey=key",
          "extraEnv[0].name=HTTPS_PROXY", "extraEnv[0].valueFrom.secretKeyRef.name=proxy",
          "extraEnv[0].valueFrom.secretKeyRef.key=url"], True,
         {**base, "secret": "other", "apiKeyKey": "key",
          "image": "registry.example.com/platform/sendsms-whitelister:1.2.3@sha256:" + "ab" * 32},
         ["Service", "Deployment", "ServiceMonitor"]),
        ("chart, example, fallback, every option off", CHART, "1.25.0", ["1.25.0", "1.33.0"],
         ["example.enabled=true", "sidecar.native=false", "stateFile.enabled=false",
          "probes.readiness.enabled=false", "probes.liveness.enabled=false", "metrics.podAnnotations=false"],
         False, {**base, "stateFile": False, "readiness": False}, ["Deployment"]),
        ("consumer chart, native sidecar", consumer, "1.33.0", ["1.29.0", "1.33.0"], [], True,
         {**base, "secret": "shop-sendsms", "image": f"registry.example.com/platform/sendsms-whitelister:{app_version}"},
         ["Deployment"]),
        ("consumer chart, native off (fallback)", consumer, "1.25.0", ["1.25.0", "1.33.0"],
         ["whitelister.sidecar.native=false"], False,
         {**base, "secret": "shop-sendsms", "image": f"registry.example.com/platform/sendsms-whitelister:{app_version}"},
         ["Deployment"]),
    ]

    @check("helm dependency build: consumer chart, offline from file://")
    def _():
        r = run_helm("dependency", "build", str(consumer))
        require(r.returncode == 0, r.stderr.strip())

    lint_cases = [(CHART, []), (CHART, ["example.enabled=true"]),
                  (CHART, ["example.enabled=true", "sidecar.native=false"]),
                  (CHART, ["example.enabled=true", "metrics.serviceMonitor.enabled=true"]),
                  (CHART, ["mode=daemonset", "gateway.tokenSecret=gw"]),
                  (CHART, ["mode=deployment", "gateway.tokenSecret=gw", "prometheusRule.enabled=true",
                           "dashboard.enabled=true", "metrics.serviceMonitor.enabled=true"]),
                  (consumer, [])]
    for chart, sets in lint_cases:
        label = f"{chart.name} {' '.join(sets) or '(defaults)'}"

        @check(f"helm lint --strict: {label}")
        def _():
            r = run_helm("lint", "--strict", str(chart), *[a for s in sets for a in ("--set", s)])
            require(r.returncode == 0, (r.stdout + r.stderr).strip()[-800:])

    for name, chart, kube, versions, sets, native, values, kinds in scenarios:

        @check(f"helm template + kubernetes-validate --strict + assertions: {name}")
        def _():
            r = run_helm("template", "demo", str(chart), "--namespace", "shop", "--kube-version", kube,
                         *[a for s in sets for a in ("--set", s)])
            require(r.returncode == 0, r.stderr.strip())
            slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
            (out_dir / f"{slug}.yaml").write_text(r.stdout)
            docs = [d for d in yaml.safe_load_all(r.stdout) if d]
            require(sorted(d["kind"] for d in docs) == sorted(kinds),
                    f"rendered {[d['kind'] for d in docs]}, expected {kinds}")
            validated = validate_docs(docs, versions)
            modes = []
            for doc in docs:
                if chart == CHART:
                    labels_ok(doc)
                for pod in all_pod_specs(doc):
                    modes.append(assert_pod(pod, native, values, f"{doc['kind']}/{doc['metadata']['name']}"))
                    annotations = doc["spec"]["template"]["metadata"].get("annotations") or {}
                    if chart != CHART:
                        # The consumer's own scrape annotations (helm/tests/consumer/values.yaml).
                        require(annotations == CONSUMER_ANNOTATIONS,
                                f"the app's own annotations did not survive: {annotations}")
                    elif "metrics.podAnnotations=false" in sets:
                        require(not annotations, f"annotations rendered although disabled: {annotations}")
                    else:
                        require(annotations.get("prometheus.io/scrape") == "true"
                                and annotations.get("prometheus.io/port") == str(STATUS_PORT),
                                f"prometheus annotations missing: {annotations}")
            require((native is None) == (not modes), f"pods rendered: {len(modes)}")
            if "ServiceMonitor" in kinds:
                svc = next(d for d in docs if d["kind"] == "Service")
                sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
                dep = next(d for d in docs if d["kind"] == "Deployment")
                pod_labels = dep["spec"]["template"]["metadata"]["labels"]
                require(all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items()),
                        "metrics Service does not select the example pods")
                require(all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()),
                        "ServiceMonitor does not select the metrics Service")
                require(sm["metadata"]["labels"].get("release") == "prom", "serviceMonitor.labels not applied")
                require(svc["spec"]["ports"][0]["targetPort"] == STATUS_PORT, "metrics Service targets the wrong port")
            return (f"{len(docs)} resource(s) valid against {', '.join(versions)}"
                    + (f" [{'; '.join(validated)}]" if validated else "") + (f"; {modes[0]}" if modes else ""))

    @check("the trap, shown by the schemas: a native sidecar is not valid Kubernetes 1.27")
    def _():
        r = run_helm("template", "demo", str(CHART), "--kube-version", "1.33.0", "--set", "example.enabled=true")
        dep = next(d for d in yaml.safe_load_all(r.stdout) if d)
        try:
            kv.validate(dep, "1.27.0", strict=True)
        except kv.ValidationError as e:
            require("restartPolicy" in str(e.message), f"unexpected error: {e.message}")
            return "1.27 has no container restartPolicy: an old API server drops it"
        raise CheckFailed("the native render validated against 1.27")

    must_fail = [
        ("native sidecar for Kubernetes 1.28", CHART, "1.28.0", ["example.enabled=true"], "sidecar.native=false"),
        ("native sidecar for Kubernetes 1.28 (consumer)", consumer, "1.28.0", [], "sidecar.native=false"),
        ("Kubernetes 1.24, below Chart.yaml kubeVersion", CHART, "1.24.0",
         ["example.enabled=true", "sidecar.native=false"], "kubeVersion"),
        ("metrics without a pod selector", CHART, "1.33.0", ["metrics.serviceMonitor.enabled=true"], "podSelector"),
        ("an unknown top-level value", CHART, "1.33.0", ["replicaCount=2"], "additional properties"),
        ("an unknown nested value", CHART, "1.33.0", ["sidecar.restartPolicy=Never"], "additional properties"),
        ("an empty Secret name", CHART, "1.33.0", ["credentials.existingSecret="], "existingSecret"),
    ]
    root_attempts = ["securityContext.runAsUser=0", "securityContext.runAsNonRoot=false",
                     "securityContext.runAsNonRoot=null", "podSecurityContext.runAsUser=0",
                     "podSecurityContext.runAsNonRoot=false", "podSecurityContext=null",
                     "securityContext=null", "securityContext.allowPrivilegeEscalation=true",
                     "securityContext.privileged=true", "securityContext.capabilities.add={SYS_ADMIN}",
                     "securityContext.capabilities.drop={NET_RAW}", "securityContext.runAsGroup=0"]
    for attempt in root_attempts:
        must_fail.append((f"root or privilege: {attempt}", CHART, "1.33.0", ["example.enabled=true", attempt], "schema"))
    must_fail.append(("root through the consumer: whitelister.securityContext.runAsUser=0", consumer, "1.33.0",
                      ["whitelister.securityContext.runAsUser=0"], "schema"))

    @check(f"refused renders: {len(must_fail)} bad value combinations fail with a clear error")
    def _():
        for name, chart, kube, sets, expect in must_fail:
            r = run_helm("template", "demo", str(chart), "--kube-version", kube, *[a for s in sets for a in ("--set", s)])
            require(r.returncode != 0, f"{name}: rendered without error")
            require(expect in r.stderr, f"{name}: error does not mention '{expect}': {r.stderr.strip()}")
        return f"rendered manifests kept in {out_dir.relative_to(ROOT)}"


# --------------------------------------------------------------------------------------
# docker-compose


def interpolate(value):
    """Resolve ${VAR:-default} / ${VAR:?err} / ${VAR} as with an empty environment, and $$."""
    if isinstance(value, str):
        value = re.sub(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}",
                       lambda m: m[3] if m[2] in (":-", "-") else ("set" if m[2] else ""), value)
        return value.replace("$$", "$")
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    return value


def load_compose_files(files: dict[str, Path], loaded: dict[str, dict]) -> None:
    """One check per file: it parses and validates against the compose spec; `loaded` gets it."""
    import compose_spec

    for fname, path in files.items():

        @check(f"compose spec: {fname} parses and validates (compose-spec, strict keys)")
        def _():
            raw = yaml.safe_load(path.read_text())  # resolves anchors and << merges
            doc = interpolate({k: v for k, v in raw.items() if not k.startswith("x-")})
            compose_spec.PyCompose.from_yaml(yaml.safe_dump(doc))
            loaded[fname] = doc
            return f"{len(doc['services'])} services"


def hardened(svc: dict, name: str) -> None:
    require(svc.get("read_only") is True, f"{name}: read_only is not true")
    require(svc.get("cap_drop") == ["ALL"], f"{name}: cap_drop is not [ALL]")
    require("no-new-privileges:true" in svc.get("security_opt", []), f"{name}: no-new-privileges missing")


def cmd_compose() -> None:
    files = {f: COMPOSE / f for f in ("compose.yaml", "compose.once.yaml", "compose.demo.yaml")}
    loaded: dict[str, dict] = {}

    load_compose_files(files, loaded)

    def uses_secret_file(doc: dict, svc: dict, name: str) -> None:
        env = svc.get("environment", {})
        require("SENDSMS_API_KEY" not in env and "SENDSMS_PASSWORD" not in env, f"{name}: API key in plain env")
        key_file = env.get("SENDSMS_API_KEY_FILE", "")
        m = re.fullmatch(r"/run/secrets/(\w+)", key_file)
        require(m, f"{name}: SENDSMS_API_KEY_FILE is {key_file!r}")
        mounted = [s if isinstance(s, str) else s.get("target", s["source"]) for s in svc.get("secrets", [])]
        require(m[1] in mounted, f"{name}: secret {m[1]} not mounted")
        require("file" in doc["secrets"].get(m[1], {}) or "environment" in doc["secrets"].get(m[1], {}),
                f"top-level secret {m[1]} undefined")

    def healthcheck_calls_health(svc: dict, name: str) -> list:
        test = svc.get("healthcheck", {}).get("test", [])
        require(test[:3] == ["CMD", BINARY_IN_IMAGE, "health"], f"{name}: healthcheck is {test}")
        return test

    @check("compose.yaml: sidecar `run` with healthcheck, app in its network namespace once healthy")
    def _():
        doc = loaded["compose.yaml"]
        side, app = doc["services"]["whitelister"], doc["services"]["app"]
        require(side["command"] == ["run"], f"whitelister command {side['command']}")
        healthcheck_calls_health(side, "whitelister")
        require(side.get("user") == "65532:65532", "whitelister user")
        hardened(side, "whitelister")
        uses_secret_file(doc, side, "whitelister")
        require(app.get("network_mode") == "service:whitelister", f"app network_mode {app.get('network_mode')}")
        require(app["depends_on"]["whitelister"]["condition"] == "service_healthy", "app does not wait for healthy")
        require("ports" not in app, "app publishes ports, but it has no network of its own")
        # The state file lives on a named volume at the directory the image creates for uid
        # 65532 (a fresh named volume copies that directory's ownership).
        state_dir = str(Path(side["environment"]["SENDSMS_STATE_FILE"]).parent)
        mounts = {v.split(":")[1]: v.split(":")[0] for v in side.get("volumes", [])}
        require(state_dir in mounts and mounts[state_dir] in doc.get("volumes", {}),
                f"{state_dir} is not a named volume: {side.get('volumes')}")
        dockerfile = (ROOT / "Dockerfile").read_text()
        require(re.search(rf"^COPY --from=builder --chown=65532:65532 \S+ {re.escape(state_dir)}$", dockerfile, re.M),
                f"the image does not create {state_dir} owned by 65532")

    @check("compose.once.yaml: one-shot `once` job, app on service_completed_successfully")
    def _():
        doc = loaded["compose.once.yaml"]
        job, app = doc["services"]["whitelister"], doc["services"]["app"]
        require(job["command"] == ["once"], f"job command {job['command']}")
        require(job.get("restart") == "no", "a one-shot job must not restart")
        require(job.get("healthcheck", {}).get("disable") is True, "the image HEALTHCHECK must be disabled for `once`")
        hardened(job, "whitelister")
        uses_secret_file(doc, job, "whitelister")
        require(app["depends_on"]["whitelister"]["condition"] == "service_completed_successfully",
                "app does not wait for the job to succeed")

    @check("compose.demo.yaml: emulator + bastion + sidecar + app wired consistently")
    def _():
        doc = loaded["compose.demo.yaml"]
        s = doc["services"]
        emu, bastion, side, app = s["emulator"], s["bastion"], s["whitelister"], s["app"]
        require(emu["command"][0] == "emulator", f"emulator command {emu['command']}")
        flags = dict(f.lstrip("-").split("=", 1) for f in emu["command"][1:])
        listen_port = flags["listen"].rsplit(":", 1)[1]
        require(flags["listen"].startswith("0.0.0.0:"), "emulator must listen on all interfaces in the network")
        env = side["environment"]
        require(env["SENDSMS_API_URL"] == f"http://emulator:{listen_port}/json", f"API URL {env['SENDSMS_API_URL']}")
        require(env["SENDSMS_IP_PROVIDERS"] == f"http://emulator:{listen_port}/ip", "IP provider is not the emulator")
        require(int(env["SENDSMS_IP_QUORUM"]) <= len(env["SENDSMS_IP_PROVIDERS"].split(",")), "quorum > providers")
        for flag in ("SENDSMS_ALLOW_NON_PUBLIC_IPS", "SENDSMS_ALLOW_INSECURE_API_URL"):
            require(env.get(flag) == "true", f"{flag} must be true in the demo")
        require(flags["username"] == env["SENDSMS_USERNAME"], "username differs between emulator and sidecar")
        uses_secret_file(doc, side, "whitelister")
        key_file = COMPOSE / doc["secrets"]["sendsms_api_key"]["file"]
        require(key_file.read_text().strip() == flags["default-key"], "the demo key is not the emulator's default key")
        # The bootstrap proxy is the bastion, whose fixed address is the pre-whitelisted one.
        proxy = re.fullmatch(r"http://bastion:(\d+)", env["SENDSMS_BOOTSTRAP_PROXY"])
        require(proxy, f"bootstrap proxy {env['SENDSMS_BOOTSTRAP_PROXY']}")
        tinyproxy = doc["configs"]["tinyproxy"]["content"]
        require(re.search(rf"^Port {proxy[1]}$", tinyproxy, re.M), "tinyproxy port differs from the proxy URL")
        bastion_ip = ipaddress.ip_address(bastion["networks"]["demo"]["ipv4_address"])
        require(str(bastion_ip) == flags["allow"], f"emulator allows {flags['allow']}, bastion is {bastion_ip}")
        ipam = doc["networks"]["demo"]["ipam"]["config"][0]
        subnet, dyn = ipaddress.ip_network(ipam["subnet"]), ipaddress.ip_network(ipam["ip_range"])
        require(bastion_ip in subnet and bastion_ip not in dyn, "bastion address must be static, outside ip_range")
        require(re.search(rf"^Allow {subnet}$", tinyproxy, re.M), "tinyproxy must allow the demo subnet only")
        test = healthcheck_calls_health(emu, "emulator")
        require(test[3:] == ["--url", f"http://127.0.0.1:{listen_port}/ip"], f"emulator healthcheck {test}")
        healthcheck_calls_health(side, "whitelister")
        require(side["command"] == ["run"], "sidecar must run `run`")
        require(side["depends_on"]["emulator"]["condition"] == "service_healthy", "sidecar must wait for the emulator")
        require(app["network_mode"] == "service:whitelister", "app must share the sidecar's network namespace")
        require(app["depends_on"]["whitelister"]["condition"] == "service_healthy", "app must wait for healthy")
        for name in ("emulator", "whitelister", "app"):
            hardened(s[name], name)


# --------------------------------------------------------------------------------------
# GitHub workflows


def cmd_workflows(actionlint: str) -> None:
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    release = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())

    @check("actionlint is live: it flags script injection from an untrusted context")
    def _():
        bad = "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo '${{ github.event.head_commit.message }}'\n"
        r = subprocess.run([actionlint, "-no-color", "-"], input=bad, capture_output=True, text=True)
        require(r.returncode != 0 and "untrusted" in r.stdout, f"not flagged: {r.stdout}{r.stderr}")
        return subprocess.run([actionlint, "-version"], capture_output=True, text=True).stdout.splitlines()[0]

    @check(f"actionlint (with shellcheck on every run: script): {', '.join(w.name for w in workflows)}")
    def _():
        require(shutil.which("shellcheck"), "shellcheck is not on PATH: run: scripts would go unchecked")
        r = subprocess.run([actionlint, "-no-color", *map(str, workflows)], capture_output=True, text=True)
        require(r.returncode == 0, (r.stdout + r.stderr).strip()[-2000:])
        return "no findings"

    @check("release.yml: every action pinned to a commit, least privilege, a tag trigger")
    def _():
        text = (ROOT / ".github" / "workflows" / "release.yml").read_text()
        for uses in re.findall(r"uses: (\S+)(.*)", text):
            require(re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses[0]) and re.match(r"\s+# v\d", uses[1]),
                    f"not pinned to a commit with its version noted: {uses[0]}{uses[1]}")
        require(release["permissions"] == {}, "the workflow grants permissions to every job")
        require(list(release[True]["push"]) == ["tags"], "release.yml must run on tags only")
        return f"{len(re.findall('uses: ', text))} action uses"

    @check("release.yml publishes the image the chart and the compose files default to, for amd64 and arm64, with provenance")
    def _():
        env, jobs = release["env"], release["jobs"]
        require(env["IMAGE"] == PUBLISHED_IMAGE, f"IMAGE {env['IMAGE']}")
        values = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
        require(f"{values['registry']}/{values['repository']}" == env["IMAGE"],
                f"the chart defaults to {values['registry']}/{values['repository']}, the workflow publishes {env['IMAGE']}")
        for f in sorted(COMPOSE.glob("compose*.yaml")):
            for ref in re.findall(r"\$\{SENDSMS_WHITELISTER_IMAGE:-([^}]+)\}", f.read_text()):
                require(ref.rsplit(":", 1)[0] == env["IMAGE"], f"{f.name} defaults to {ref}")
        steps = {s.get("id") or s.get("name") or s["uses"]: s for s in jobs["image"]["steps"]}
        push = steps["push"]["with"]
        require(push["platforms"] == "linux/amd64,linux/arm64" and push["push"] is True, f"image build {push}")
        require(str(push["provenance"]).startswith("mode=max"), "no max-mode BuildKit provenance")
        builder = re.search(r"^FROM --platform=\$BUILDPLATFORM (\S+) AS builder$", (ROOT / "Dockerfile").read_text(), re.M)[1]
        require(jobs["binaries"]["container"] == builder, f"binaries built in {jobs['binaries']['container']}, the image in {builder}")
        require(any("scripts/build-release.sh" in s.get("run", "") for s in jobs["binaries"]["steps"]),
                "the binaries are not built by scripts/build-release.sh")
        for job in ("binaries", "image", "chart"):
            attest = [s for s in jobs[job]["steps"] if "attest-build-provenance" in s.get("uses", "")]
            perms = jobs[job]["permissions"]
            require(attest and perms.get("id-token") == "write" and perms.get("attestations") == "write",
                    f"{job}: no provenance attestation")
        chart_run = next(s["run"] for s in jobs["chart"]["steps"] if "run" in s)
        require('push "chart/sendsms-whitelister-$VERSION.tgz" "$CHART_REPOSITORY"' in chart_run, "the chart is not pushed")
        require(env["CHART_REPOSITORY"].startswith("oci://"), "the chart repository is not OCI")
        release_run = next(s["run"] for s in jobs["release"]["steps"] if "run" in s)
        require("SHA256SUMS" in release_run and "dist/*" in release_run, "the release does not attach dist/ with SHA256SUMS")
        return f"{env['IMAGE']}, chart {env['CHART_REPOSITORY']}"


def cmd_compose_gateway() -> None:
    """compose.gateway.yaml (one gateway per host) and compose.build.yaml (build from source)."""
    loaded: dict[str, dict] = {}
    load_compose_files({"compose.gateway.yaml": COMPOSE / "compose.gateway.yaml"}, loaded)
    image_var = re.compile(r"\$\{SENDSMS_WHITELISTER_IMAGE:-([^}]+)\}")

    @check("compose.gateway.yaml: one gateway with a token, apps reach it by service name without the key, --scale works")
    def _():
        doc = loaded["compose.gateway.yaml"]
        s = doc["services"]
        gw = s["whitelister"]
        env = gw["environment"]
        require(gw["command"] == ["run"], f"gateway command {gw['command']}")
        require(env.get("SENDSMS_GATEWAY_LISTEN") == f"0.0.0.0:{GATEWAY_PORT}", f"SENDSMS_GATEWAY_LISTEN {env.get('SENDSMS_GATEWAY_LISTEN')}")
        require("SENDSMS_GATEWAY_TOKEN" not in env, "the gateway token is a plain env value")
        token = re.fullmatch(r"/run/secrets/(\w+)", env.get("SENDSMS_GATEWAY_TOKEN_FILE", ""))
        require(token and token[1] in gw["secrets"] and "file" in doc["secrets"][token[1]], "the token is not a compose secret")
        require("SENDSMS_API_KEY" not in env and env.get("SENDSMS_API_KEY_FILE", "").startswith("/run/secrets/"), "API key")
        require("ports" not in gw, "the gateway is published on the host")
        require(gw.get("healthcheck", {}).get("test", [])[:3] == ["CMD", BINARY_IN_IMAGE, "health"], "gateway healthcheck")
        hardened(gw, "whitelister")
        apps = {n: v for n, v in s.items() if n != "whitelister"}
        require(apps, "no app")
        key_secret = env["SENDSMS_API_KEY_FILE"].rsplit("/", 1)[1]
        for name, app in apps.items():
            require("container_name" not in app and "network_mode" not in app, f"{name} cannot be scaled")
            require(not any(str(p).count(":") for p in app.get("ports", [])), f"{name} pins a host port")
            require(set(gw["networks"]) & set(app["networks"]), f"{name} shares no network with the gateway")
            require(len(app["networks"]) > 1, f"{name} has no network of its own")
            require(app["environment"]["SMS_API_URL"] == f"http://whitelister:{GATEWAY_PORT}/json", f"{name} API URL")
            require(key_secret not in app.get("secrets", []), f"{name} mounts the API key")
            require(token[1] in app.get("secrets", []), f"{name} lacks the gateway token")
            require(app["depends_on"]["whitelister"]["condition"] == "service_healthy", f"{name} does not wait")
            hardened(app, name)
        return f"gateway + {', '.join(apps)}"

    @check("compose files: every sendsms-whitelister image defaults to the published tag (the chart's appVersion)")
    def _():
        app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        seen = 0
        for f in sorted(COMPOSE.glob("compose*.yaml")):
            text = f.read_text()
            for ref in image_var.findall(text):
                require(ref == f"{PUBLISHED_IMAGE}:{app_version}", f"{f.name}: {ref}")
                seen += 1
            if f.name != "compose.build.yaml":
                require("context: ../.." not in text, f"{f.name} builds from source itself")
        return f"{seen} references to {PUBLISHED_IMAGE}:{app_version}"

    @check("compose.build.yaml: merged over each stack with a `whitelister` service, it builds that one and adds nothing")
    def _():
        import compose_spec

        override = yaml.safe_load((COMPOSE / "compose.build.yaml").read_text())
        require(list(override) == ["services"] and list(override["services"]) == ["whitelister"], "override shape")
        require(override["services"]["whitelister"]["build"] == {"context": "../.."}, "build context")
        require((COMPOSE / "../../Dockerfile").resolve().exists(), "no Dockerfile at the build context")
        for name in ("compose.yaml", "compose.once.yaml", "compose.gateway.yaml", "compose.demo.yaml"):
            base = interpolate({k: v for k, v in yaml.safe_load((COMPOSE / name).read_text()).items() if not k.startswith("x-")})
            require("whitelister" in base["services"], f"{name} has no whitelister service")
            merged = {**base, "services": {**base["services"],
                                           "whitelister": {**base["services"]["whitelister"], **override["services"]["whitelister"]}}}
            compose_spec.PyCompose.from_yaml(yaml.safe_dump(merged))
        return "4 stacks"


def main() -> int:
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "dockerfile":
        cmd_dockerfile()
    elif cmd == "helm" and len(sys.argv) == 3:
        cmd_helm(sys.argv[2])
    elif cmd == "compose":
        cmd_compose()
        cmd_compose_gateway()
    elif cmd == "workflows" and len(sys.argv) == 3:
        cmd_workflows(sys.argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return summary(cmd)


if __name__ == "__main__":
    sys.exit(main())
