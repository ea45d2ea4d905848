#!/usr/bin/env python3
"""Checks on the chart's modes, its monitoring and the ways in without Helm; no cluster needed.

    chart_checks.py modes HELM                  every mode renders, validates and is wired right
    chart_checks.py monitoring HELM PROMTOOL    the PrometheusRule and the Grafana dashboard
    chart_checks.py ways-in HELM KUBECTL        the kustomize component and the rendered snippets
    chart_checks.py ways-in HELM KUBECTL --write   regenerate deploy/ from the chart

Run by scripts/check-packaging.sh, with the helpers of scripts/packaging_checks.py. Each
check prints PASS or FAIL; the exit status is the number of failed checks (capped at 100).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import packaging_checks as pc  # noqa: E402
from packaging_checks import CheckFailed, check, require  # noqa: E402

ROOT = pc.ROOT
CHART = pc.CHART
METRICS_FILE = ROOT / "helm" / "metrics.txt"
DASHBOARD = CHART / "dashboards" / "sendsms-whitelister.json"
ALERT_TESTS = ROOT / "helm" / "tests" / "alerts.test.yaml"
DEPLOY_DOC = ROOT / "docs" / "deploy.md"
SNIPPETS = ROOT / "deploy" / "snippets"
COMPONENT = ROOT / "deploy" / "kustomize" / "native-sidecar"
KUSTOMIZE_EXAMPLE = ROOT / "deploy" / "kustomize" / "example"
OUT = ROOT / ".cache" / "packaging" / "rendered"
TOKEN_SECRET = "sendsms-gateway"
CLIENT_LABELS = {"sendsms-gateway-client": "true"}
# Labels a scrape adds to every series (ServiceMonitor or the kubernetes-pods job).
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container", "service", "endpoint"}
# OpenShift's restricted SCC assigns the uid: nothing may name one.
OPENSHIFT = ["securityContext.runAsUser=null", "securityContext.runAsGroup=null",
             "podSecurityContext.runAsUser=null", "podSecurityContext.runAsGroup=null"]


def helm_template(helm: str, *sets: str, chart: Path = CHART, kube: str = "1.33.0",
                  namespace: str = "shop") -> subprocess.CompletedProcess:
    args = [helm, "template", "demo", str(chart), "--namespace", namespace, "--kube-version", kube]
    for s in sets:  # "str:KEY=VALUE" keeps VALUE a string (--set-string)
        args += ["--set-string", s[4:]] if s.startswith("str:") else ["--set", s]
    return subprocess.run(args, capture_output=True, text=True)


def render(helm: str, *sets: str, **kw) -> list[dict]:
    r = helm_template(helm, *sets, **kw)
    require(r.returncode == 0, r.stderr.strip()[-1200:])
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def save(name: str, docs: list[dict]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    (OUT / f"{slug}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))


def versions() -> list[str]:
    import kubernetes_validate as kv

    latest = kv.latest_version()
    require(tuple(map(int, latest.split(".")[:2])) > (1, 33), f"newest schema {latest} is not newer than 1.33")
    return ["1.29.0", "1.33.0", latest]


# --------------------------------------------------------------------------------------
# Pod security


RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}


def assert_restricted(pod: dict, where: str, openshift: bool = False) -> None:
    """The Pod Security Standards' restricted profile (baseline included), control by control;
    with openshift=True also what OpenShift's restricted-v2 SCC refuses: a uid, gid or fsGroup
    of the pod's own choosing (the SCC assigns them from the namespace's range)."""
    psc = pod.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        require(not pod.get(field), f"{where}: {field}")
    for v in pod.get("volumes") or []:
        kind = next(k for k in v if k != "name")
        require(kind in RESTRICTED_VOLUMES, f"{where}: volume {v['name']} is a {kind}")
    for s in psc.get("sysctls") or []:
        require(s["name"] in SAFE_SYSCTLS, f"{where}: sysctl {s['name']}")
    containers = pod.get("initContainers", []) + pod.get("containers", []) + pod.get("ephemeralContainers", [])
    for c in containers:
        sc = c.get("securityContext") or {}
        name = f"{where}: {c['name']}"
        require(not sc.get("privileged"), f"{name}: privileged")
        require(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation is not false")
        caps = sc.get("capabilities") or {}
        require("ALL" in (caps.get("drop") or []), f"{name}: capabilities do not drop ALL")
        require(set(caps.get("add") or []) <= {"NET_BIND_SERVICE"}, f"{name}: adds {caps.get('add')}")
        require(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{name}: runAsNonRoot is not true")
        require(sc.get("runAsUser", psc.get("runAsUser")) != 0, f"{name}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        require(seccomp in ("RuntimeDefault", "Localhost"), f"{name}: seccompProfile {seccomp}")
        require(sc.get("procMount", "Default") == "Default", f"{name}: procMount")
        for p in c.get("ports", []):
            require(not p.get("hostPort"), f"{name}: hostPort {p.get('hostPort')}")
        se = sc.get("seLinuxOptions") or {}
        require(not se.get("user") and not se.get("role"), f"{name}: seLinuxOptions user/role")
        require((sc.get("appArmorProfile") or {}).get("type") != "Unconfined", f"{name}: AppArmor unconfined")
        if openshift:
            for field in ("runAsUser", "runAsGroup"):
                require(field not in sc, f"{name}: sets {field} (OpenShift's SCC assigns it)")
    if openshift:
        for field in ("runAsUser", "runAsGroup", "fsGroup", "supplementalGroups"):
            require(field not in psc, f"{where}: the pod sets {field} (OpenShift's SCC assigns it)")


# --------------------------------------------------------------------------------------
# Modes


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def by_kind(docs: list[dict]) -> dict[str, dict]:
    kinds = [d["kind"] for d in docs]
    require(len(kinds) == len(set(kinds)), f"one of each kind expected: {kinds}")
    return {d["kind"]: d for d in docs}


def assert_gateway(docs: list[dict], mode: str, values: dict) -> str:
    """The workload, Service, NetworkPolicy, PDB and ServiceAccount of a gateway mode."""
    kinds = by_kind(docs)
    workload_kind = "DaemonSet" if mode == "daemonset" else "Deployment"
    wl = kinds[workload_kind]
    pod_meta, pod = wl["spec"]["template"]["metadata"], wl["spec"]["template"]["spec"]
    pod_labels = pod_meta["labels"]
    require(labels_match(wl["spec"]["selector"]["matchLabels"], pod_labels), "workload selector")
    require([c["name"] for c in pod["containers"]] == ["sendsms-whitelister"] and not pod.get("initContainers"),
            f"containers {[c['name'] for c in pod['containers']]}")
    c = pod["containers"][0]
    pc.assert_sidecar_container(c, ["run"], values, workload_kind)
    env = pc.env_map(c)
    want = {"SENDSMS_LISTEN": f"[::]:{pc.STATUS_PORT}", "SENDSMS_GATEWAY_LISTEN": f"[::]:{pc.GATEWAY_PORT}",
            "SENDSMS_GATEWAY_HOLD": "30s", "SENDSMS_GATEWAY_TOKEN_FILE": "/run/secrets/sendsms-gateway/token"}
    for k, v in want.items():
        require(env.get(k, {}).get("value") == v, f"{k} is {env.get(k)}, expected {v}")
    require("SENDSMS_GATEWAY_TOKEN" not in env, "the token is an env value, not a file")
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    token = mounts.get("sendsms-gateway-token", {})
    require(token.get("mountPath") == "/run/secrets/sendsms-gateway" and token.get("readOnly") is True,
            f"token mount {token}")
    require(volumes["sendsms-gateway-token"]["secret"] == {"secretName": TOKEN_SECRET, "items": [{"key": "token", "path": "token"}]},
            f"token volume {volumes['sendsms-gateway-token']}")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    require(ports == {"sendsms-status": pc.STATUS_PORT, "sendsms-gateway": pc.GATEWAY_PORT}, f"ports {ports}")
    for probe in ("readinessProbe", "livenessProbe"):
        require(c[probe]["httpGet"] == {"path": "/healthz", "port": pc.STATUS_PORT}, f"{probe} {c[probe]}")
    require("startupProbe" not in c, "a gateway needs no startup probe")
    require(pod.get("automountServiceAccountToken") is False, "the service account token is mounted")
    sa = kinds["ServiceAccount"]
    require(pod["serviceAccountName"] == sa["metadata"]["name"] and sa.get("automountServiceAccountToken") is False,
            "ServiceAccount")
    ann = pod_meta.get("annotations") or {}
    require(ann.get("prometheus.io/port") == str(pc.STATUS_PORT), f"pod annotations {ann}")

    svc = kinds["Service"]
    require(labels_match(svc["spec"]["selector"], pod_labels), "the Service does not select the gateway pods")
    sports = {p["name"]: p for p in svc["spec"]["ports"]}
    require(sports["gateway"]["port"] == pc.GATEWAY_PORT and sports["gateway"]["targetPort"] == "sendsms-gateway",
            f"Service gateway port {sports['gateway']}")
    require(all(p["targetPort"] in ports for p in sports.values()), "a Service targetPort names no container port")
    require(svc["spec"]["ipFamilyPolicy"] == "PreferDualStack", "the Service is not dual-stack where it can be")
    local = svc["spec"].get("internalTrafficPolicy")
    require(local == ("Local" if mode == "daemonset" else None), f"internalTrafficPolicy {local}")

    np = kinds["NetworkPolicy"]
    require(labels_match(np["spec"]["podSelector"]["matchLabels"], pod_labels), "the NetworkPolicy does not select the gateway")
    require(np["spec"]["policyTypes"] == ["Ingress"], "the NetworkPolicy restricts more than ingress")
    rules = {r["ports"][0]["port"]: r for r in np["spec"]["ingress"]}
    gw = rules["sendsms-gateway"]
    require(gw["from"] == [{"podSelector": {"matchLabels": CLIENT_LABELS}}], f"gateway admits {gw.get('from')}")
    require(set(rules) == {"sendsms-gateway", "sendsms-status"}, f"ports admitted {set(rules)}")

    if mode == "deployment":
        pdb = kinds["PodDisruptionBudget"]
        require(labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels), "the PDB does not select the gateway")
        require(pdb["spec"]["maxUnavailable"] < wl["spec"]["replicas"], "the PDB lets every gateway go")
        require(wl["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, "a rollout may remove a gateway first")
        require(pod.get("topologySpreadConstraints"), "replicas are not spread over nodes")
    else:
        require("PodDisruptionBudget" not in kinds, "a PDB for a DaemonSet")
        require(wl["spec"]["updateStrategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0},
                "a rollout would leave a node without its gateway")
    assert_restricted(pod, workload_kind)
    return f"{workload_kind}, Service ({local or 'Cluster'} traffic), NetworkPolicy, {len(docs)} resources"


def cmd_modes(helm: str) -> None:
    import kubernetes_validate as kv  # noqa: F401  (versions() needs it)

    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    base = {"name": "sendsms-whitelister", "secret": "sendsms-credentials", "usernameKey": "username",
            "apiKeyKey": "apiKey", "image": f"{pc.PUBLISHED_IMAGE}:{app_version}"}
    token = f"gateway.tokenSecret={TOKEN_SECRET}"
    all_versions = versions()

    def validate(docs: list[dict], vs: list[str]) -> None:
        for d in docs:
            if d["apiVersion"].startswith("monitoring.coreos.com/"):
                continue  # prometheus-operator CRDs: no schema; checked by `monitoring`
            pc.validate_manifest(d, vs, f"{d['kind']}/{d['metadata']['name']}")

    gateway_cases = [
        ("daemonset, with just mode and the token Secret", "daemonset", [f"mode=daemonset", token],
         ["DaemonSet", "NetworkPolicy", "Service", "ServiceAccount"], []),
        ("deployment, with just mode and the token Secret", "deployment", [f"mode=deployment", token],
         ["Deployment", "NetworkPolicy", "PodDisruptionBudget", "Service", "ServiceAccount"], []),
        ("deployment, Redis coordination from a Secret, ServiceMonitor, alerts, dashboard", "deployment",
         ["mode=deployment", token, "config.coordination.mode=redis",
          "config.coordination.redis.existingSecret.name=fleet-redis", "metrics.serviceMonitor.enabled=true",
          "prometheusRule.enabled=true", "dashboard.enabled=true"],
         ["ConfigMap", "Deployment", "NetworkPolicy", "PodDisruptionBudget", "PrometheusRule", "Service",
          "Service", "ServiceAccount", "ServiceMonitor"], []),
    ]
    for name, mode, sets, kinds, extra in gateway_cases:
        for openshift in (False, True):
            label = f"mode {name}" + (", OpenShift-like (restricted, no runAsUser)" if openshift else "")

            @check(f"{label}: renders, validates --strict against {', '.join(all_versions)}")
            def _():
                vals = sets + (OPENSHIFT if openshift else [])
                docs = render(helm, *vals)
                save(label, docs)
                require(sorted(d["kind"] for d in docs) == sorted(kinds), f"rendered {sorted(d['kind'] for d in docs)}")
                validate(docs, all_versions)
                if "ServiceMonitor" in kinds:
                    sm = next(d for d in docs if d["kind"] == "ServiceMonitor")
                    msvc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics"))
                    wl = next(d for d in docs if d["kind"] == "Deployment")
                    require(labels_match(msvc["spec"]["selector"], wl["spec"]["template"]["metadata"]["labels"]),
                            "the metrics Service does not select the gateway pods")
                    require(labels_match(sm["spec"]["selector"]["matchLabels"], msvc["metadata"]["labels"]),
                            "the ServiceMonitor does not select the metrics Service")
                    docs = [d for d in docs if d["kind"] != "Service" or d is not msvc]
                core = [d for d in docs if d["kind"] in ("DaemonSet", "Deployment", "Service", "NetworkPolicy",
                                                          "PodDisruptionBudget", "ServiceAccount")]
                detail = assert_gateway(core, mode, {**base, "uid": None} if openshift else base)
                if openshift:
                    pod = next(d for d in docs if d["kind"] in ("DaemonSet", "Deployment"))["spec"]["template"]["spec"]
                    assert_restricted(pod, mode, openshift=True)
                return detail

    sidecar_cases = [
        ("sidecar + gateway in the pod (loopback, no token), native", ["example.enabled=true", "gateway.enabled=true"],
         True, None),
        ("sidecar + gateway with a token, fallback", ["example.enabled=true", "gateway.enabled=true", token,
                                                      "sidecar.native=false"], False, TOKEN_SECRET),
    ]
    for name, sets, native, secret in sidecar_cases:
        for openshift in (False, True):
            label = f"mode {name}" + (", OpenShift-like (restricted, no runAsUser)" if openshift else "")

            @check(f"{label}: renders, validates, `run` serves the gateway on 127.0.0.1 and `once` does not")
            def _():
                docs = render(helm, *sets, *(OPENSHIFT if openshift else []), kube="1.33.0")
                save(label, docs)
                (dep,) = docs
                vs = all_versions if native else ["1.25.0", *all_versions]
                validate(docs, vs)
                pod = dep["spec"]["template"]["spec"]
                pc.assert_pod(pod, native, {**base, "gateway": True, **({"uid": None} if openshift else {})}, "Deployment")
                assert_restricted(pod, "Deployment", openshift=openshift)
                for c in pod.get("initContainers", []) + pod["containers"]:
                    env = pc.env_map(c)
                    if c.get("args") == ["run"]:
                        require(env["SENDSMS_GATEWAY_LISTEN"]["value"] == f"127.0.0.1:{pc.GATEWAY_PORT}",
                                f"{c['name']}: gateway on {env['SENDSMS_GATEWAY_LISTEN']}")
                        require(("SENDSMS_GATEWAY_TOKEN_FILE" in env) == bool(secret), f"{c['name']}: token file {secret}")
                    elif c.get("args") == ["once"]:
                        require(not any(k.startswith("SENDSMS_GATEWAY") for k in env), "`once` got gateway variables")
                volumes = {v["name"]: v for v in pod["volumes"]}
                require(("sendsms-gateway-token" in volumes) == bool(secret), f"token volume {list(volumes)}")
                return f"valid against {', '.join(vs)}"

    notify = ["notifications.urlsSecret=sms-hooks", "notifications.events=ip_changed\\,not_ready_for=5m",
              "notifications.heartbeatSecret=sms-heartbeat", "extraCA.configMap=corp-ca"]

    @check("notifications, heartbeat and extra CA: from a Secret or ConfigMap as files; only `run` notifies, both trust the CA")
    def _():
        files = {"SENDSMS_NOTIFY_URLS_FILE": ("/run/secrets/sendsms-notify/urls", "sendsms-notify", {"secret": {
                     "secretName": "sms-hooks", "items": [{"key": "urls", "path": "urls"}]}}),
                 "SENDSMS_HEARTBEAT_URL_FILE": ("/run/secrets/sendsms-heartbeat/url", "sendsms-heartbeat", {"secret": {
                     "secretName": "sms-heartbeat", "items": [{"key": "url", "path": "url"}]}}),
                 "SENDSMS_EXTRA_CA_FILE": ("/etc/sendsms-whitelister/ca/ca.crt", "sendsms-extra-ca", {"configMap": {
                     "name": "corp-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}})}
        for sets, kube in ((["example.enabled=true", "sidecar.native=false"], "1.28.0"), (["mode=deployment", token], "1.33.0")):
            docs = render(helm, *sets, *notify, kube=kube)
            wl = next(d for d in docs if d["kind"] in ("Deployment", "DaemonSet"))
            validate([wl], [kube, *all_versions[1:]])
            pod = wl["spec"]["template"]["spec"]
            volumes = {v["name"]: v for v in pod["volumes"]}
            for c in pod.get("initContainers", []) + pod["containers"]:
                if c.get("args") not in (["run"], ["once"]):
                    continue
                env, mounts = pc.env_map(c), {m["name"]: m for m in c.get("volumeMounts", [])}
                for var, (path, volume, source) in files.items():
                    wanted = c["args"] == ["run"] or var == "SENDSMS_EXTRA_CA_FILE"
                    require((var in env) == wanted, f"{c['name']}: {var} {'missing' if wanted else 'given to once'}")
                    if wanted:
                        require(env[var]["value"] == path and path.startswith(mounts[volume]["mountPath"] + "/")
                                and mounts[volume].get("readOnly") is True, f"{c['name']}: {var} at {env[var]}")
                        require({k: v for k, v in volumes[volume].items() if k != "name"} == source, f"volume {volume}")
                require(not any(n in env and "value" in env[n] and "://" in env[n]["value"]
                                for n in ("SENDSMS_NOTIFY_URLS", "SENDSMS_HEARTBEAT_URL")), "a URL as an env value")
            run = next(c for c in pod.get("initContainers", []) + pod["containers"] if c.get("args") == ["run"])
            require(pc.env_map(run)["SENDSMS_NOTIFY_EVENTS"]["value"] == "ip_changed,not_ready_for=5m", "events")
        return "fallback sidecar and deployment"

    consumer = pc.ROOT / ".cache" / "packaging" / "consumer"

    @check("OpenShift-like renders of the sidecar (example native and fallback, consumer chart): no uid, restricted")
    def _():
        import shutil

        shutil.rmtree(consumer.parent / "helm-openshift", ignore_errors=True)
        shutil.copytree(ROOT / "helm", consumer.parent / "helm-openshift")
        chart = consumer.parent / "helm-openshift" / "tests" / "consumer"
        r = subprocess.run([helm, "dependency", "build", str(chart)], capture_output=True, text=True)
        require(r.returncode == 0, r.stderr)
        cases = [("example native", CHART, ["example.enabled=true", *OPENSHIFT], "1.33.0", True),
                 ("example fallback", CHART, ["example.enabled=true", "sidecar.native=false", *OPENSHIFT], "1.25.0", False),
                 ("consumer", chart, [f"whitelister.{s}" for s in OPENSHIFT[:2]], "1.33.0", True)]
        for what, ch, sets, kube, native in cases:
            docs = render(helm, *sets, chart=ch, kube=kube)
            save(f"openshift {what}", docs)
            (dep,) = docs
            validate(docs, [kube, *all_versions[1:]])
            pod = dep["spec"]["template"]["spec"]
            if ch == CHART:
                pc.assert_pod(pod, native, {**base, "uid": None}, what)
                assert_restricted(pod, what, openshift=True)
            else:
                # The consumer's own pod securityContext is the app's: only the sidecar is checked.
                for c in pod["initContainers"]:
                    if c["name"] == "sendsms-whitelister":
                        require("runAsUser" not in c["securityContext"], f"{what}: the sidecar sets a uid")
        return "3 renders, none names a uid, gid or fsGroup"

    @check("pod annotations: the app's own prometheus.io/* survive; without them the sidecar's are added, other keys kept")
    def _():
        import shutil

        work = consumer.parent / "helm-annotations"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(ROOT / "helm", work)
        chart = work / "tests" / "consumer"
        r = subprocess.run([helm, "dependency", "build", str(chart)], capture_output=True, text=True)
        require(r.returncode == 0, r.stderr)
        (dep,) = render(helm, chart=chart)
        got = dep["spec"]["template"]["metadata"]["annotations"]
        require(got == pc.CONSUMER_ANNOTATIONS, f"the app's annotations changed: {got}")
        drop = [f"podAnnotations.prometheus\\.io/{k}=null" for k in ("scrape", "port", "path")]
        (dep,) = render(helm, *drop, chart=chart)
        got = dep["spec"]["template"]["metadata"]["annotations"]
        want = {"example.com/team": "notifications", "prometheus.io/scrape": "true",
                "prometheus.io/port": str(pc.STATUS_PORT), "prometheus.io/path": "/metrics"}
        require(got == want, f"expected {want}, got {got}")
        # A single prometheus.io/* key of the app's is enough to keep all of the sidecar's out.
        (dep,) = render(helm, *drop[1:], chart=chart)
        got = dep["spec"]["template"]["metadata"]["annotations"]
        require(got == {"example.com/team": "notifications", "prometheus.io/scrape": "true"}, f"mixed: {got}")
        # Gateway pods: podAnnotations given as a value win the same way.
        docs = render(helm, "mode=daemonset", token, "str:podAnnotations.prometheus\\.io/scrape=false")
        ds = next(d for d in docs if d["kind"] == "DaemonSet")
        got = ds["spec"]["template"]["metadata"]["annotations"]
        require(got == {"prometheus.io/scrape": "false"}, f"gateway pod annotations {got}")
        return "4 combinations"

    must_fail = [
        ("daemonset without a token Secret", ["mode=daemonset"], "gateway.tokenSecret"),
        ("deployment without a token Secret", ["mode=deployment"], "gateway.tokenSecret"),
        ("an unknown mode", ["mode=statefulset"], "mode"),
        ("a listen address that takes one family only", ["sidecar.listenAddress=127.0.0.1"], "listenAddress"),
        ("a token Secret name that is no Secret name", ["mode=deployment", "gateway.tokenSecret=Bad_Name"], "tokenSecret"),
        ("a gateway Service outside the cluster", ["mode=deployment", token, "service.type=LoadBalancer"], "service"),
        ("a startup budget (2s x 60 = 120s) below requestTimeout + verifyTimeout (130s)",
         ["example.enabled=true", "probes.startup.failureThreshold=60"], "startup probe's budget"),
        ("a budget (140s) that covers the timeouts but not 2 leases of a coordinated wait (160s)",
         ["example.enabled=true", "probes.startup.failureThreshold=70", "config.coordination.mode=redis",
          "config.coordination.redis.url=redis://redis.shop.svc:6379/0"], "2 x config.coordination.lease"),
        ("a verifyTimeout raised past the default budget", ["example.enabled=true", "config.verifyTimeout=5m"],
         "config.verifyTimeout (5m)"),
        ("a gateway pod that may run as root", ["mode=deployment", token, "podSecurityContext.runAsUser=0"], "schema"),
        ("an unknown notification event", ["notifications.events=ip_changed\\,sms_sent"], "events"),
    ]

    @check(f"refused renders: {len(must_fail)} mode, gateway and startup-budget mistakes fail with a clear error")
    def _():
        for name, sets, expect in must_fail:
            r = helm_template(helm, *sets)
            require(r.returncode != 0, f"{name}: rendered without error")
            require(expect in r.stderr, f"{name}: error does not mention '{expect}': {r.stderr.strip()[-400:]}")
        # The boundary renders: a budget of exactly requestTimeout + verifyTimeout.
        render(helm, "example.enabled=true", "probes.startup.failureThreshold=65")
        return "and a budget of exactly 130s renders"


# --------------------------------------------------------------------------------------
# Monitoring


def load_metrics() -> dict[str, dict]:
    metrics: dict[str, dict] = {}
    for n, line in enumerate(METRICS_FILE.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        require(len(parts) == 4, f"metrics.txt:{n}: NAME TYPE LABELS WHEN expected: {line!r}")
        name, kind, labels, when = parts
        require(re.fullmatch(r"sendsms_whitelister_[a-z0-9_]+", name), f"metrics.txt:{n}: name {name}")
        require(kind in ("counter", "gauge", "histogram"), f"metrics.txt:{n}: type {kind}")
        require(when in ("always", "coordination"), f"metrics.txt:{n}: when {when}")
        require(kind != "counter" or name.endswith("_total"), f"metrics.txt:{n}: a counter's name ends in _total")
        require(name not in metrics, f"metrics.txt:{n}: {name} twice")
        metrics[name] = {"type": kind, "labels": set() if labels == "-" else set(labels.split(",")), "when": when}
    return metrics


GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
            # aggregations, which may be followed by `by (...)` rather than `(`
            "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
            "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
TOKEN = re.compile(r'(?P<str>"(?:[^"\\]|\\.)*")|(?P<range>\[[^\]]*\])|(?P<brace>\{[^}]*\})'
                   r"|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)|(?P<num>[0-9][0-9.eE+-]*)|(?P<space>\s+)|(?P<other>.)", re.S)


def metric_refs(expr: str) -> tuple[list[tuple[str, set[str]]], set[str]]:
    """The metric names an expression selects, each with the label names its matchers use,
    and the label names of its by/without/on/ignoring clauses."""
    tokens = [(m.lastgroup, m.group()) for m in TOKEN.finditer(expr) if m.lastgroup != "space"]
    refs, grouping, i = [], set(), 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "brace":
            raise CheckFailed(f"a selector without a metric name: {text}")
        if kind == "ident" and text in GROUPING:
            j = i + 1
            if nxt[1] == "(":
                j = i + 2
                while tokens[j][1] != ")":
                    if tokens[j][0] == "ident":
                        grouping.add(tokens[j][1])
                    j += 1
            i = j + 1
            continue
        if kind == "ident" and nxt[1] != "(" and text not in KEYWORDS:
            labels = set()
            if nxt[0] == "brace":
                labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", nxt[1]))
                i += 1
            refs.append((text, labels))
        i += 1
    return refs, grouping


def assert_expr(expr: str, metrics: dict[str, dict], where: str) -> set[str]:
    refs, grouping = metric_refs(expr)
    require(refs, f"{where}: no metric in {expr!r}")
    names, allowed = set(), set(TARGET_LABELS)
    for name, labels in refs:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        known = metrics.get(name) or (metrics.get(base) if metrics.get(base, {}).get("type") == "histogram" else None)
        require(known, f"{where}: {name} is not in helm/metrics.txt: {expr!r}")
        names.add(name if name in metrics else base)
        allowed |= known["labels"] | ({"le"} if name.endswith("_bucket") else set())
        require(labels <= allowed, f"{where}: {name} has no label {sorted(labels - allowed)}")
    require(grouping <= allowed, f"{where}: grouping by unknown labels {sorted(grouping - allowed)}")
    return names


def github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def promtool_rules(promtool: str, groups: list[dict], directory: Path, test: Path | None = None) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    if test is None:
        r = subprocess.run([promtool, "check", "rules", str(directory / "rules.yaml")], capture_output=True, text=True)
    else:
        (directory / test.name).write_text(test.read_text())
        r = subprocess.run([promtool, "test", "rules", str(directory / test.name)], capture_output=True, text=True)
    require(r.returncode == 0, (r.stdout + r.stderr).strip()[-1500:])
    return r.stdout.strip().splitlines()[-1].strip()


def cmd_monitoring(helm: str, promtool: str) -> None:
    metrics: dict[str, dict] = {}
    work = Path(tempfile.mkdtemp(prefix="monitoring-"))

    @check("helm/metrics.txt: one metric a line, name, type, labels and when")
    def _():
        metrics.update(load_metrics())
        return f"{len(metrics)} metrics, {sum(m['when'] == 'coordination' for m in metrics.values())} only with coordination"

    @check("promtool is live: it refuses a rule with a syntax error")
    def _():
        try:
            promtool_rules(promtool, [{"name": "x", "rules": [{"alert": "X", "expr": "sum(("}]}], work / "canary")
        except CheckFailed:
            return subprocess.run([promtool, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        raise CheckFailed("promtool accepted a broken expression")

    rules: list[dict] = []

    @check("PrometheusRule: off by default, rendered with prometheusRule.enabled, every alert with summary, description and a runbook in docs/deploy.md")
    def _():
        require(not any(d["kind"] == "PrometheusRule" for d in render(helm, "mode=deployment", f"gateway.tokenSecret={TOKEN_SECRET}")),
                "rendered while disabled")
        docs = render(helm, "prometheusRule.enabled=true", "prometheusRule.labels.release=prom")
        save("prometheusrule", docs)
        (doc,) = docs
        require(doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule", "kind")
        require(doc["metadata"]["labels"].get("release") == "prom", "prometheusRule.labels not applied")
        anchors = {github_anchor(h) for h in re.findall(r"^#{2,4} (.+)$", DEPLOY_DOC.read_text(), re.M)}
        for g in doc["spec"]["groups"]:
            for r in g["rules"]:
                a = r.get("annotations", {})
                require(a.get("summary") and a.get("description"), f"{r['alert']}: summary or description missing")
                url = a.get("runbook_url", "")
                require(url.startswith("https://github.com/sendsms-whitelister/sendsms-whitelister/blob/main/docs/deploy.md#"),
                        f"{r['alert']}: runbook {url}")
                anchor = url.split("#", 1)[1]
                require(anchor == r["alert"].lower() and anchor in anchors,
                        f"{r['alert']}: docs/deploy.md has no section #{anchor}")
                require(r["labels"].get("severity") in ("warning", "critical"), f"{r['alert']}: severity")
                require('namespace="shop"' in r["expr"], f"{r['alert']}: not scoped to the release: {r['expr']}")
                rules.append(r)
        names = [r["alert"] for r in rules]
        require(len(names) == len(set(names)), f"duplicate alerts {names}")
        return f"{len(rules)} alerts: {', '.join(names)}"

    @check("alerts name only metrics (and labels) in helm/metrics.txt; the store alert only a coordination metric")
    def _():
        require(rules and metrics, "nothing to check")
        for r in rules:
            used = assert_expr(r["expr"], metrics, r["alert"])
            if r["alert"] == "SendsmsWhitelisterStoreDown":
                require({metrics[n]["when"] for n in used} == {"coordination"},
                        "the store alert reads a metric that exists without coordination")
        return f"{len(rules)} expressions"

    @check("promtool check rules: the rendered PrometheusRule, annotations and all")
    def _():
        (doc,) = render(helm, "prometheusRule.enabled=true")
        return promtool_rules(promtool, doc["spec"]["groups"], work / "check")

    def test_groups(*sets: str) -> list[dict]:
        (doc,) = render(helm, "prometheusRule.enabled=true", *sets)
        groups = doc["spec"]["groups"]
        for g in groups:
            for r in g["rules"]:
                r.pop("annotations", None)
        return groups

    @check("promtool test rules (helm/tests/alerts.test.yaml): series that fire, series that must not")
    def _():
        cases = len(yaml.safe_load(ALERT_TESTS.read_text())["tests"])
        result = promtool_rules(promtool, test_groups(), work / "test", ALERT_TESTS)
        return f"{cases} test groups: {result}"

    @check("the alert tests bite: with notReadyFor=30m and whitelistSizeThreshold=40 they fail")
    def _():
        for sets in (["prometheusRule.notReadyFor=30m"], ["prometheusRule.whitelistSizeThreshold=40"]):
            try:
                promtool_rules(promtool, test_groups(*sets), work / "bite", ALERT_TESTS)
            except CheckFailed:
                continue
            raise CheckFailed(f"promtool test rules passed with {sets}")

    dashboard: dict = {}

    @check("Grafana dashboard: valid JSON, uid, variables, and a panel for each thing issue 18 asks for")
    def _():
        dashboard.update(json.loads(DASHBOARD.read_text()))
        require(dashboard["uid"] == "sendsms-whitelister" and dashboard["title"], "uid or title")
        variables = {v["name"] for v in dashboard["templating"]["list"]}
        require({"datasource", "namespace", "pod"} <= variables, f"variables {variables}")
        exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
        for what, metric in [("readiness", "ready"), ("IP changes", "ip_changes_total"),
                             ("API calls by outcome", "api_calls_total"), ("verification time", "verification_duration_seconds_bucket"),
                             ("whitelist size", "whitelist_size"), ("gateway calls", "gateway_calls_total"),
                             ("held calls", "gateway_held_calls"), ("hold time", "gateway_hold_duration_seconds_bucket")]:
            require(f"sendsms_whitelister_{metric}" in exprs, f"no panel shows {what}")
        ids = [p["id"] for p in dashboard["panels"]]
        require(len(ids) == len(set(ids)), "panel ids repeat")
        return f"{len(dashboard['panels'])} panels"

    @check("Grafana dashboard: every expression names only metrics and labels in helm/metrics.txt, and parses (promtool)")
    def _():
        require(dashboard and metrics, "nothing to check")

        def concrete(expr: str) -> str:
            return (expr.replace("$__rate_interval", "5m").replace("${datasource}", "")
                    .replace("$namespace", ".*").replace("$pod", ".*"))

        exprs = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
        exprs += [(f"variable {v['name']}", re.sub(r"^label_values\((.*), *\w+\)$", r"\1", v["query"]["query"]))
                  for v in dashboard["templating"]["list"] if v["type"] == "query"]
        used = set()
        for where, expr in exprs:
            used |= assert_expr(concrete(expr), metrics, where)
        rules = [{"record": f"dashboard:expr_{i}", "expr": concrete(e)} for i, (_, e) in enumerate(exprs)]
        promtool_rules(promtool, [{"name": "dashboard", "rules": rules}], work / "dashboard")
        return f"{len(exprs)} expressions over {len(used)} of {len(metrics)} metrics"

    @check("Grafana dashboard ConfigMap: off by default; with dashboard.enabled, labelled grafana_dashboard: \"1\", holding the JSON")
    def _():
        require(not any(d["kind"] == "ConfigMap" for d in render(helm)), "rendered while disabled")
        docs = render(helm, "dashboard.enabled=true", "dashboard.annotations.grafana_folder=SMS")
        (cm,) = docs
        pc.validate_manifest(cm, versions(), "ConfigMap")
        require(cm["metadata"]["labels"].get("grafana_dashboard") == "1", f"labels {cm['metadata']['labels']}")
        require(cm["metadata"]["annotations"] == {"grafana_folder": "SMS"}, "annotations")
        require(json.loads(cm["data"]["sendsms-whitelister.json"]) == dashboard, "the ConfigMap's JSON differs from the file")
        return f"{len(cm['data']['sendsms-whitelister.json'])} bytes"


# --------------------------------------------------------------------------------------
# Ways in without Helm: rendered snippets and the kustomize component


SNIPPET_HEADER = """\
# {title}
# Rendered from the chart (helm/sendsms-whitelister) by `scripts/chart_checks.py ways-in
# HELM KUBECTL --write`; CI fails when it drifts from the chart. Paste it into the values of a
# chart you cannot edit, under the names that chart uses (extraInitContainers / initContainers,
# extraContainers / sidecars, extraVolumes / volumes). It expects the Secret
# sendsms-credentials (keys username, apiKey); change SENDSMS_BOOTSTRAP_PROXY to your bastion.
# docs/deploy.md, "A chart you cannot edit".
"""


def generated(helm: str) -> dict[Path, str]:
    """Every file of deploy/ that is rendered from the chart."""
    common = ["example.enabled=true", "config.bootstrapProxy=http://bastion.example.com:3128"]
    (native,) = render(helm, *common)
    (fallback,) = render(helm, *common, "sidecar.native=false", kube="1.28.0")
    # The component's workloads get their bootstrap path from a patch of the user's own.
    (bare,) = render(helm, "example.enabled=true")
    npod, fpod = native["spec"]["template"]["spec"], fallback["spec"]["template"]["spec"]
    bpod = bare["spec"]["template"]["spec"]

    def dump(doc: dict) -> str:
        return yaml.safe_dump(doc, sort_keys=False, width=100)

    files = {
        SNIPPETS / "native-sidecar.yaml": SNIPPET_HEADER.format(
            title="The native sidecar (Kubernetes >= 1.29): an init container with restartPolicy: Always.")
        + dump({"extraInitContainers": npod["initContainers"], "extraVolumes": npod["volumes"]}),
        SNIPPETS / "fallback.yaml": SNIPPET_HEADER.format(
            title="Clusters without native sidecars: `once` as an init container, `run` beside the app.")
        + dump({"extraInitContainers": fpod["initContainers"],
                "extraContainers": [c for c in fpod["containers"] if c["name"] != "app"],
                "extraVolumes": fpod["volumes"]}),
    }
    patch_header = ("# The native sidecar, as a strategic-merge patch for any Deployment, StatefulSet or Job:\n"
                    "# rendered from the chart like deploy/snippets/ (scripts/chart_checks.py ways-in --write).\n"
                    "# Kustomize sets the kind and name of each workload the component selects.\n")
    pod_patch = {"initContainers": bpod["initContainers"], "volumes": bpod["volumes"]}
    files[COMPONENT / "sidecar.yaml"] = patch_header + dump(
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "selected-by-the-component"},
         "spec": {"template": {"spec": pod_patch}}})
    files[COMPONENT / "sidecar-cronjob.yaml"] = patch_header.replace("any Deployment, StatefulSet or Job", "a CronJob") + dump(
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "selected-by-the-component"},
         "spec": {"jobTemplate": {"spec": {"template": {"spec": pod_patch}}}}})
    return files


def cmd_ways_in(helm: str, kubectl: str, write: bool) -> None:
    files: dict[Path, str] = {}

    @check("deploy/: the snippets and the component's patches are what the chart renders today")
    def _():
        files.update(generated(helm))
        stale = []
        for path, text in files.items():
            if write:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
            elif not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        require(not stale, f"out of date: {stale}; run scripts/chart_checks.py ways-in HELM KUBECTL --write")
        return f"{len(files)} files" + (" written" if write else " up to date")

    all_versions = versions()
    app = {"name": "app", "image": "registry.example.com/shop/sms-notifier:1.4.2",
           "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                               "readOnlyRootFilesystem": True}}
    pod_sc = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}

    for name, native, vs in [("native-sidecar.yaml", True, all_versions), ("fallback.yaml", False, ["1.25.0", *all_versions])]:

        @check(f"deploy/snippets/{name}: a pod built from it validates --strict against {', '.join(vs)} and is restricted")
        def _():
            snippet = yaml.safe_load((SNIPPETS / name).read_text())
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "third-party-app"},
                   "spec": {"securityContext": pod_sc, "initContainers": snippet["extraInitContainers"],
                            "containers": [app, *snippet.get("extraContainers", [])], "volumes": snippet["extraVolumes"]}}
            pc.validate_manifest(pod, vs, f"Pod from {name}")
            assert_restricted(pod["spec"], name)
            shape = pc.assert_pod(pod["spec"], native, {"name": "sendsms-whitelister", "secret": "sendsms-credentials",
                                                         "usernameKey": "username", "apiKeyKey": "apiKey",
                                                         "image": pod["spec"]["initContainers"][0]["image"]}, name)
            return shape

    @check("kustomize component: deploy/kustomize/example builds (kubectl kustomize) to expected.yaml")
    def _():
        r = subprocess.run([kubectl, "kustomize", str(KUSTOMIZE_EXAMPLE)], capture_output=True, text=True)
        require(r.returncode == 0, r.stderr.strip())
        got = [d for d in yaml.safe_load_all(r.stdout) if d]
        (OUT / "kustomize-example.yaml").write_text(r.stdout)
        expected = [d for d in yaml.safe_load_all((KUSTOMIZE_EXAMPLE / "expected.yaml").read_text()) if d]
        if got != expected:
            for g, e in zip(got, expected):
                if g != e:
                    raise CheckFailed(f"{g['kind']}/{g['metadata']['name']} differs from expected.yaml; "
                                      f"the build is in {OUT.relative_to(ROOT)}/kustomize-example.yaml")
            raise CheckFailed(f"{len(got)} resources built, {len(expected)} expected")
        return f"{len(got)} resources, as expected"

    @check("kustomize component: the named workloads get the native sidecar first, the others are untouched, all valid and restricted")
    def _():
        r = subprocess.run([kubectl, "kustomize", str(KUSTOMIZE_EXAMPLE)], capture_output=True, text=True)
        require(r.returncode == 0, r.stderr.strip())
        built = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(r.stdout) if d}
        sources = {(d["kind"], d["metadata"]["name"]): d
                   for d in yaml.safe_load_all((KUSTOMIZE_EXAMPLE / "workloads.yaml").read_text()) if d}
        patched = {("Deployment", "sms-notifier"), ("StatefulSet", "sms-queue"), ("Job", "sms-campaign"),
                   ("CronJob", "sms-digest")}
        require(set(built) == set(sources), f"resources {sorted(built)}")
        for key, doc in built.items():
            pc.validate_manifest(doc, all_versions, f"{key[0]}/{key[1]}")
            if key not in patched:
                require(doc == sources[key], f"{key[0]}/{key[1]} was changed")
                continue
            pod = pc.all_pod_specs(doc)[0]
            assert_restricted(pod, f"{key[0]}/{key[1]}")
            pc.assert_pod(pod, True, {"name": "sendsms-whitelister", "secret": "sendsms-credentials", "usernameKey": "username",
                                      "apiKeyKey": "apiKey", "image": pod["initContainers"][0]["image"]}, key[1])
            own = pc.all_pod_specs(sources[key])[0]
            require([c["name"] for c in pod["initContainers"]][1:] == [c["name"] for c in own.get("initContainers", [])],
                    f"{key[1]}: its own init containers changed or do not come after the sidecar")
            require(pod["containers"] == own["containers"], f"{key[1]}: its containers changed")
        return f"{len(patched)} patched ({', '.join(k for k, _ in sorted(patched))}), {len(built) - len(patched)} untouched"


def main() -> int:
    args = sys.argv[1:]
    if args[:1] == ["modes"] and len(args) == 2:
        cmd_modes(args[1])
    elif args[:1] == ["monitoring"] and len(args) == 3:
        cmd_monitoring(args[1], args[2])
    elif args[:1] == ["ways-in"] and len(args) in (3, 4) and args[3:] in ([], ["--write"]):
        cmd_ways_in(args[1], args[2], args[3:] == ["--write"])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return pc.summary(args[0])


if __name__ == "__main__":
    sys.exit(main())
