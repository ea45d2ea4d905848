#!/usr/bin/env python3
"""Documentation you can trust: every fenced block is checked by the tool that reads it, and
the README's figures are quoted from BENCHMARKS.md.

    check_docs.py snippets HELM [FILE.md ...]   the fenced blocks (default: DOCS below)
    check_docs.py figures                       README.md's figures against BENCHMARKS.md's
    check_docs.py selftest HELM                 every check fails on a broken sample
    check_docs.py all HELM                      the three above

Run by scripts/check-docs.sh, which installs the tools (tinyproxy, squid, iproute2, a venv
with pyyaml, compose-spec and kubernetes-validate, Helm). Each check prints PASS or FAIL; the
exit status is the number of failed checks (capped at 100).

Snippet markers. Every fenced block in DOCS has an HTML comment (invisible on GitHub) on the
line right above its opening fence; a block without one fails, so no snippet slips through:

    <!-- check: tinyproxy -->           tinyproxy 1.11 runs it, as root in a network namespace
                                        with the snippet's own Port and Listen: CONNECT to the
                                        API on 443 from an Allow address must pass; another
                                        host, another port, an address outside Allow and (with
                                        BasicAuth) no credentials must not. Without root it is
                                        started on loopback only (NOT RUN; a failure in CI).
    <!-- check: file PATH -->           a file another snippet of the same page reads (the
                                        tinyproxy Filter file): checked through that snippet
    <!-- check: squid -->               squid -k parse, with no ERROR, FATAL or WARNING
    <!-- check: kubernetes [VERSION] --> kubernetes-validate --strict (VERSION and the latest)
    <!-- check: helm FILE -->           FILE (Chart.yaml, values.yaml, templates/NAME.yaml) of a
                                        chart that depends on helm/sendsms-whitelister; the
                                        page's helm blocks make one chart, missing files come
                                        from helm/tests/consumer. Rendered with helm template,
                                        validated with kubernetes-validate --strict, and a
                                        sendsms-whitelister container must be in it.
    <!-- check: helm -f -->             a values file given to that chart with -f
    <!-- check: compose -->             the compose spec (packaging_checks.load_compose_files)
    <!-- check: yaml -->, json, env     a YAML / JSON parser; env: NAME=VALUE lines
    <!-- check: sh -->                  bash -n
    <!-- check: none (REASON) -->       not checked, and says why (a diagram, an output)

Figure markers. A figure (a size, an amount of memory, a time) is defined once in
BENCHMARKS.md and only quoted in README.md:

    <!-- figure: NAME [UNIT] -->VALUE   inline. In BENCHMARKS.md it defines NAME (UNIT is
                                        appended to a bare number in a table cell); in
                                        README.md it quotes it, and VALUE must be the same.
    <!-- figures: NAME -->              on its own line above a block (a table, a paragraph):
                                        in README.md the block must equal BENCHMARKS.md's.
    <!-- figures: none (REASON) -->     above a README block whose numbers are settings or
                                        limits, not measurements.

Any other number with a unit of size or time in README.md's prose or tables fails.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import packaging_checks as pc  # noqa: E402
from packaging_checks import CheckFailed, check, require  # noqa: E402

DOCS = ["README.md", "SECURITY.md", "BENCHMARKS.md", "docs/**/*.md"]
IN_CI = os.environ.get("CI") == "true"

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
MARKER = re.compile(r"^\s*<!--\s*check:(?P<spec>.*?)-->\s*$")


@dataclass
class Block:
    path: str
    line: int  # the opening fence, 1-based
    text: str
    kind: str | None
    args: list[str]

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Page:
    path: str
    blocks: list[Block] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # markers that mark nothing, unclosed fences


def read_page(path: Path, label: str) -> Page:
    page = Page(label)
    lines = path.read_text().splitlines()
    marked = set()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = len(m["indent"]), m["fence"]
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        if j == len(lines):
            page.errors.append(f"{label}:{i + 1}: the fence is never closed")
        body = [line[indent:] if not line[:indent].strip() else line.lstrip() for line in lines[i + 1 : j]]
        kind, args = None, []
        marker = MARKER.match(lines[i - 1]) if i else None
        if marker:
            marked.add(i - 1)
            words = marker["spec"].split()
            kind, args = (words[0], words[1:]) if words else ("", [])
            if kind == "none":
                args = [" ".join(args)]
        page.blocks.append(Block(label, i + 1, "\n".join(body) + "\n", kind, args))
        i = j + 1
    for n, line in enumerate(lines):
        if MARKER.match(line) and n not in marked:
            page.errors.append(f"{label}:{n + 1}: a check marker that is not right above an opening fence")
    return page


def doc_pages(names: list[str]) -> list[Page]:
    paths = sorted({p for pattern in names for p in ROOT.glob(pattern)})
    return [read_page(p, str(p.relative_to(ROOT))) for p in paths]


# --------------------------------------------------------------------------------------
# One function per kind: it raises CheckFailed or returns a detail for the PASS line.

KINDS = {}


def kind(name: str):
    def register(fn):
        KINDS[name] = fn
        return fn

    return register


@dataclass
class Context:
    page: Page
    work: Path
    helm: str


@kind("none")
def check_none(b: Block, ctx: Context) -> str:
    require(re.fullmatch(r"\(.*\S.*\)", b.args[0]), "`none` needs a reason in parentheses: <!-- check: none (why) -->")
    return f"not checked {b.args[0]}"


@kind("file")
def check_file(b: Block, ctx: Context) -> str:
    require(len(b.args) == 1, "usage: <!-- check: file PATH -->")
    users = [o.where for o in ctx.page.blocks if o is not b and o.kind not in (None, "none", "file") and b.args[0] in o.text]
    require(users, f"no checked snippet of {ctx.page.path} reads {b.args[0]}")
    return f"{b.args[0]}, read by {', '.join(users)}"


@kind("sh")
def check_sh(b: Block, ctx: Context) -> str:
    r = subprocess.run(["bash", "-n"], input=b.text, capture_output=True, text=True)
    require(r.returncode == 0, r.stderr.strip().replace("bash: ", "line "))
    return "bash -n"


@kind("yaml")
def check_yaml(b: Block, ctx: Context) -> str:
    import yaml

    docs = list(yaml.safe_load_all(b.text))
    return f"{len(docs)} YAML document(s)"


@kind("json")
def check_json(b: Block, ctx: Context) -> str:
    json.loads(b.text)
    return "JSON"


@kind("env")
def check_env(b: Block, ctx: Context) -> str:
    # The env-file grammar docker compose and systemd agree on: NAME=VALUE, comments, blanks.
    for n, line in enumerate(b.text.splitlines(), 1):
        s = line.strip()
        require(not s or s.startswith("#") or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", s), f"line {n} is no NAME=VALUE: {s!r}")
    return "NAME=VALUE lines"


@kind("kubernetes")
def check_kubernetes(b: Block, ctx: Context) -> str:
    import kubernetes_validate as kv
    import yaml

    versions = list(dict.fromkeys(b.args + [kv.latest_version()]))
    docs = [d for d in yaml.safe_load_all(b.text) if d]
    require(docs, "no YAML document")
    for d in docs:
        pc.validate_manifest(d, versions, d.get("kind", "a document without kind"))
    return f"{', '.join(d['kind'] for d in docs)} valid against {', '.join(versions)}"


def squid_binary() -> str | None:
    return shutil.which("squid") or next((p for p in ("/usr/sbin/squid",) if os.access(p, os.X_OK)), None)


@kind("squid")
def check_squid(b: Block, ctx: Context) -> str:
    squid = squid_binary()
    require(squid, "NOT RUN: squid is not installed (scripts/check-docs.sh installs it as root)")
    conf = ctx.work / f"squid-{b.line}.conf"
    conf.write_text(b.text)
    r = subprocess.run([squid, "-k", "parse", "-f", str(conf)], capture_output=True, text=True)
    out = (r.stdout + r.stderr).splitlines()
    bad = [line for line in out if re.search(r"ERROR|FATAL|WARNING|unrecognized|Bungled", line)]
    require(r.returncode == 0 and not bad, f"squid -k parse exit {r.returncode}: " + " | ".join(bad or out[-3:]))
    return f"squid -k parse: {sum('Processing:' in line for line in out)} directives, no error or warning"


# --------------------------------------------------------------------------------------
# tinyproxy: there is no parse-only flag, so the snippet runs.

UPSTREAM = """
import socket, sys, threading
def serve(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], port)); s.listen(16)
    while True:
        s.accept()[0].close()
for port in (80, 443):
    threading.Thread(target=serve, args=(port,), daemon=True).start()
threading.Event().wait()
"""

# Sends each CONNECT from its own source address; prints the status codes as JSON.
PROBE = r"""
import base64, json, socket, sys, time

def status(case):
    deadline = time.monotonic() + 5
    while True:  # the first case also waits for tinyproxy to listen
        s = socket.socket()
        s.settimeout(5)
        try:
            s.bind((case["src"], 0))
            s.connect((case["dst"], case["port"]))
            break
        except OSError as e:
            s.close()
            if time.monotonic() > deadline:
                return f"connect: {e}"
            time.sleep(0.05)
    with s:
        req = f"CONNECT {case['target']} HTTP/1.1\r\nHost: {case['target']}\r\n"
        if case.get("auth"):
            req += "Proxy-Authorization: Basic " + base64.b64encode(case["auth"].encode()).decode() + "\r\n"
        s.sendall((req + "\r\n").encode())
        line = s.recv(256).split(b"\r\n")[0].decode(errors="replace")
        return int(line.split()[1]) if line.startswith("HTTP/") else f"answer {line!r}"

print(json.dumps([status(c) for c in json.loads(sys.argv[1])]))
"""


def tinyproxy_directives(text: str) -> list[tuple[str, str]]:
    return [(w[0], w[1].strip() if len(w) > 1 else "") for w in (line.split(None, 1) for line in text.splitlines()) if w and not w[0].startswith("#")]


def tinyproxy_config(b: Block, ctx: Context, work: Path, listen: str | None, port: int | None) -> Path:
    """The snippet with its paths moved into `work` (and Listen/Port replaced when given)."""
    files = {o.args[0]: o.text for o in ctx.page.blocks if o.kind == "file" and o.args}
    out = []
    for line in b.text.splitlines():
        words = line.split(None, 1)
        d = words[0] if words else ""
        if d == "Filter":
            path = words[1].strip().strip('"')
            require(path in files, f"Filter {path}: {ctx.page.path} shows no `<!-- check: file {path} -->` block with its content")
            (work / "filter").write_text(files[path])
            line = f'Filter "{work / "filter"}"'
        elif d in ("LogFile", "PidFile"):
            line = f'{d} "{work / d.lower()}"'
        elif d in ("Listen", "Port") and port is not None:
            continue  # replaced below
        out.append(line)
    if port is not None:
        out += [f"Port {port}", f"Listen {listen}"]
    conf = work / "tinyproxy.conf"
    conf.write_text("\n".join(out) + "\n")
    return conf


def start_tinyproxy(cmd: list[str], conf: Path, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([*cmd, "tinyproxy", "-d", "-c", str(conf)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    time.sleep(0.3)
    if proc.poll() is not None:
        raise CheckFailed(f"tinyproxy exited {proc.returncode}: " + " | ".join(log.read_text().split("\n")[-4:]).strip(" |"))
    return proc


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


@kind("tinyproxy")
def check_tinyproxy(b: Block, ctx: Context) -> str:
    require(shutil.which("tinyproxy"), "NOT RUN: tinyproxy is not installed (scripts/check-docs.sh installs it as root)")
    work = ctx.work / f"tinyproxy-{b.line}"
    work.mkdir()
    log = work / "log"
    if os.geteuid() != 0 or not shutil.which("ip"):
        # Without root only the syntax is proven: it starts on loopback and answers.
        port = free_port()
        proc = start_tinyproxy([], tinyproxy_config(b, ctx, work, "127.0.0.1", port), log)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"CONNECT api.sendsms.ro:443 HTTP/1.1\r\n\r\n")
                require(s.recv(64).startswith(b"HTTP/"), "tinyproxy started but does not answer")
        finally:
            stop([proc])
        require(not IN_CI, "started and answered on loopback; the behaviour check NOT RUN: it needs root and ip")
        return "started and answered on loopback; behaviour NOT RUN (needs root and ip)"
    return tinyproxy_behaviour(b, ctx, work, log)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tinyproxy_behaviour(b: Block, ctx: Context, work: Path, log: Path) -> str:
    d = tinyproxy_directives(b.text)
    first = {k: v for k, v in reversed(d)}
    listen = (first.get("Listen") or "").split()[0] if first.get("Listen") else None
    port = int(re.match(r"\d*", first.get("Port", "8888"))[0] or 8888)
    # Read leniently (first words only): a line tinyproxy refuses is for tinyproxy to report.
    allow = []
    for k, v in d:
        with contextlib.suppress(ValueError, IndexError):
            allow += [ipaddress.ip_network(v.split()[0], strict=False)] if k == "Allow" else []
    auth = first.get("BasicAuth", "").split()[:2]
    auth = ":".join(auth) if len(auth) == 2 else None
    upstream, outsider = "192.0.2.80", "192.0.2.99"
    require(not any(ipaddress.ip_address(a) in n for a in (upstream, outsider) for n in allow),
            f"the check's own addresses {upstream}, {outsider} fall in an Allow range")
    client = str(next((h for n in allow for h in n.hosts() if str(h) != listen), "127.0.0.1")) if allow else "127.0.0.1"
    dst = listen or client
    ns = f"docs-tp-{os.getpid()}-{b.line}"
    etc = Path("/etc/netns") / ns  # ip netns exec mounts these over /etc: names resolve to `upstream` only
    procs: list[subprocess.Popen] = []
    try:
        etc.mkdir(parents=True)
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{upstream} api.sendsms.ro hub.sendsms.ro example.com\n")
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        if Path("/etc/nsswitch.conf").exists():
            (etc / "nsswitch.conf").write_text("hosts: files\n")
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for a in {listen, client, upstream, outsider} - {None, "127.0.0.1"}:
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{a}/32", "dev", "lo"], check=True)
        inside = ["ip", "netns", "exec", ns]
        procs.append(subprocess.Popen([*inside, sys.executable, "-c", UPSTREAM, upstream]))
        procs.append(start_tinyproxy(inside, tinyproxy_config(b, ctx, work, None, None), log))
        cases = [
            ("the API on 443 from an Allow address", dict(src=client, target="api.sendsms.ro:443", auth=auth), True),
            ("another host", dict(src=client, target="example.com:443", auth=auth), False),
            ("the API on port 80", dict(src=client, target="api.sendsms.ro:80", auth=auth), False),
        ]
        if allow:
            cases.append(("the API from an address outside Allow", dict(src=outsider, target="api.sendsms.ro:443", auth=auth), False))
        if auth:
            cases.append(("the API without credentials", dict(src=client, target="api.sendsms.ro:443"), False))
        probe = [dict(c, dst=dst, port=port) for _, c, _ in cases]
        r = subprocess.run([*inside, sys.executable, "-c", PROBE, json.dumps(probe)], capture_output=True, text=True, timeout=60)
        require(procs[-1].poll() is None, f"tinyproxy exited {procs[-1].returncode}: {log.read_text().strip()[-300:]}")
        require(r.returncode == 0, f"probe failed: {r.stderr.strip()[-300:]}")
        got = json.loads(r.stdout)
        wrong = [f"{what}: {code} (want {'200' if ok else 'a refusal'})" for (what, _, ok), code in zip(cases, got) if (code == 200) != ok]
        syntax = [line for line in log.read_text().splitlines() if re.search(r"Syntax error|Unable to parse|ERROR", line)]
        require(not wrong and not syntax, "; ".join(wrong + syntax))
        return "in a network namespace: " + ", ".join(f"{what} {code}" for (what, _, _), code in zip(cases, got))
    finally:
        stop(procs)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(etc, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Helm: a page's helm blocks are the files of one chart that depends on the sidecar chart.


def helm_renders(page: Page, ctx: Context) -> None:
    import kubernetes_validate as kv
    import yaml

    blocks = [b for b in page.blocks if b.kind == "helm"]
    if not blocks:
        return
    files, overlays = {}, []
    for b in blocks:
        if b.args == ["-f"]:
            overlays.append(b)
        elif len(b.args) == 1 and re.fullmatch(r"Chart\.yaml|values\.yaml|templates/[\w.-]+\.(yaml|tpl)", b.args[0]):
            files.setdefault(b.args[0], []).append(b)
        else:
            check(f"{b.where} helm {' '.join(b.args)}")(lambda: require(False, "usage: <!-- check: helm Chart.yaml|values.yaml|templates/NAME.yaml|-f -->"))
    twice = {name: [b.where for b in bs] for name, bs in files.items() if len(bs) > 1}
    if twice:
        check(f"{page.path} helm chart")(lambda: require(False, f"a file shown twice: {twice}"))
        return
    files = {name: bs[0] for name, bs in files.items()}
    work = ctx.work / f"helm-{re.sub(r'[^a-z0-9]+', '-', page.path.lower())}"
    shutil.copytree(pc.CHART, work / "sendsms-whitelister")
    chart = work / "docs-chart"
    shutil.copytree(pc.CONSUMER, chart, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    if any(n.startswith("templates/") for n in files):
        shutil.rmtree(chart / "templates")
        (chart / "templates").mkdir()
    for name, b in files.items():
        if name == "Chart.yaml":
            meta.update(yaml.safe_load(b.text) or {})
        else:
            (chart / name).write_text(b.text)
    # The chart under test is this checkout's, whatever repository the page names (a published
    # oci:// one included): the check never fetches anything.
    for dep in meta.get("dependencies", []):
        dep["repository"] = "file://../sendsms-whitelister"
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    shown = ", ".join(f"{n} ({b.where})" for n, b in files.items())
    versions = ["1.29.0", kv.latest_version()]

    def render(extra: list[str]) -> str:
        dep = subprocess.run([ctx.helm, "dependency", "build", str(chart)], capture_output=True, text=True)
        require(dep.returncode == 0, f"helm dependency build: {dep.stderr.strip()[-500:]}")
        r = subprocess.run([ctx.helm, "template", "docs", str(chart), "--kube-version", "1.33.0", *extra], capture_output=True, text=True)
        require(r.returncode == 0, f"helm template: {r.stderr.strip()[-800:]}")
        containers = []
        for d in (d for d in yaml.safe_load_all(r.stdout) if d):
            if "kind" not in d:  # a page's template may show only `spec:`; validate its pod template
                tmpl = (d.get("spec") or {}).get("template")
                require(tmpl, "a rendered document with neither a kind nor spec.template")
                d = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "docs"}, "template": tmpl}
            pc.validate_manifest(d, versions, d["kind"])
            pods = [d["template"]["spec"]] if d["kind"] == "PodTemplate" else pc.all_pod_specs(d)
            containers += [c["name"] for p in pods for c in p.get("initContainers", []) + p.get("containers", [])]
        require(any(c.startswith("sendsms-whitelister") for c in containers), f"no sendsms-whitelister container rendered: {containers}")
        return f"rendered and valid against {', '.join(versions)}; containers {', '.join(containers)}"

    check(f"{page.path} helm chart of {shown}")(lambda: render([]))
    for b in overlays:
        values = ctx.work / f"values-{b.line}.yaml"
        values.write_text(b.text)
        check(f"{b.where} helm -f (on the chart of {page.path})")(lambda: render(["-f", str(values)]))


def check_page(page: Page, ctx: Context) -> None:
    for error in page.errors:
        check(error.split(": ", 1)[0])(lambda: require(False, error.split(": ", 1)[1]))
    for b in page.blocks:
        if b.kind is None:
            check(f"{b.where} has a check marker")(lambda: require(False, "a fenced block without `<!-- check: KIND -->` (or `<!-- check: none (why) -->`) on the line above; see scripts/check_docs.py"))
        elif b.kind == "compose":
            path = ctx.work / f"compose-{b.line}.yaml"
            path.write_text(b.text)
            pc.load_compose_files({b.where: path}, {})
        elif b.kind == "helm":
            continue
        elif b.kind in KINDS:
            check(f"{b.where} {b.kind}")(lambda: KINDS[b.kind](b, ctx))
        else:
            check(f"{b.where} {b.kind}")(lambda: require(False, f"unknown kind {b.kind!r}; known: {', '.join(sorted([*KINDS, 'compose', 'helm']))}"))
    helm_renders(page, ctx)


def cmd_snippets(helm: str, names: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="check-docs-") as tmp:
        for page in doc_pages(names):
            check_page(page, Context(page, Path(tmp), helm))


# --------------------------------------------------------------------------------------
# Figures

UNIT = r"(?:ns|µs|us|ms|s|secs?|seconds?|min|mins|minutes?|h|hours?|days?|B|bytes|[kKMGT]i?B)"
NUMBER = r"\d+(?:,\d{3})*(?:\.\d+)?(?:[-–]\d+(?:,\d{3})*(?:\.\d+)?)?"  # 5,286 and 0.21-0.47 too
VALUE = re.compile(rf"(?P<number>{NUMBER})(?:\s?(?P<unit>{UNIT}))?(?!\w)")
BARE = re.compile(rf"(?<![\w.,-]){NUMBER}\s?{UNIT}(?!\w)")
FIGURE = re.compile(r"<!--\s*figure:\s*(?P<name>[\w.-]+)(?:\s+(?P<unit>\S+))?\s*-->")
FIGURES = re.compile(r"^\s*<!--\s*figures:\s*(?P<spec>.*?)\s*-->\s*$")


def leading_marker(line: str, where: str, errors: list[str]) -> None:
    if re.match(r"\s*<!--\s*figure:", line):
        errors.append(f"{where}: a line that starts with a figure marker ends its paragraph on GitHub (an HTML block)")


def figure_value(line: str, m: re.Match, where: str, errors: list[str]) -> str | None:
    v = VALUE.match(line, m.end())
    if not v:
        errors.append(f"{where}: `{m[0]}` is not followed by a number")
        return None
    if m["unit"] and v["unit"]:
        errors.append(f"{where}: `{m[0]}` names a unit and the value has one too")
    unit = v["unit"] or m["unit"]
    return v["number"] + (f" {unit}" if unit else "")


def without_fences(lines: list[str]) -> list[str]:
    """The lines with fenced blocks emptied and code spans blanked (a marker shown in prose)."""
    out, fence = [], None
    for line in lines:
        m = FENCE.match(line)
        if fence is None and m:
            fence = m["fence"]
        elif fence is not None and re.fullmatch(rf"[ \t]*{re.escape(fence[0])}{{{len(fence)},}}\s*", line):
            fence = None
        else:
            out.append("" if fence is not None else re.sub(r"`[^`]*`", lambda m: " " * len(m[0]), line))
            continue
        out.append("")
    return out


def block_at(lines: list[str], i: int) -> list[str]:
    """The block under a marker on line i: the lines up to the next blank one."""
    out = []
    for line in lines[i + 1 :]:
        if not line.strip():
            break
        out.append(line.rstrip())
    return out


def benchmark_figures(path: Path) -> tuple[dict, dict, list[str]]:
    inline, blocks, errors = {}, {}, []
    lines = path.read_text().splitlines()
    for n, line in enumerate(without_fences(lines), 1):
        where = f"{path.name}:{n}"
        leading_marker(line, where, errors)
        if b := FIGURES.match(line):
            if b["spec"] in blocks:
                errors.append(f"{where}: figures {b['spec']} defined twice")
            blocks[b["spec"]] = block_at(lines, n - 1)
            continue
        for m in FIGURE.finditer(line):
            if m["name"] in inline:
                errors.append(f"{where}: figure {m['name']} defined twice")
            inline[m["name"]] = figure_value(line, m, where, errors)
    return inline, blocks, errors


def readme_figures(readme: Path, benchmarks: Path) -> None:
    inline, blocks, errors = benchmark_figures(benchmarks)
    lines = readme.read_text().splitlines()
    text = without_fences(lines)
    quoted, bare = [], []
    skip = set()
    for i, line in enumerate(text):
        b = FIGURES.match(line)
        if not b:
            continue
        block = block_at(lines, i)
        skip.update(range(i, i + 1 + len(block)))
        where = f"{readme.name}:{i + 1}"
        if b["spec"].startswith("none"):
            if not re.fullmatch(r"none \(.*\S.*\)", b["spec"]):
                errors.append(f"{where}: `figures: none` needs a reason in parentheses")
        elif b["spec"] not in blocks:
            errors.append(f"{where}: figures {b['spec']} is not defined in {benchmarks.name}")
        elif block != blocks[b["spec"]]:
            diff = next((f"{x!r} != {y!r}" for x, y in zip(block, blocks[b["spec"]]) if x != y), "a different number of lines")
            errors.append(f"{where}: figures {b['spec']} differs from {benchmarks.name}: {diff}")
        else:
            quoted.append(b["spec"])
    for i, line in enumerate(text):
        if i in skip:
            continue
        where = f"{readme.name}:{i + 1}"
        leading_marker(line, where, errors)
        for m in FIGURE.finditer(line):
            value = figure_value(line, m, where, errors)
            if m["unit"]:
                errors.append(f"{where}: a quote carries its unit in the text, not in the marker")
            elif m["name"] not in inline:
                errors.append(f"{where}: figure {m['name']} is not defined in {benchmarks.name}")
            elif value != inline[m["name"]]:
                errors.append(f"{where}: figure {m['name']} is {value!r} here and {inline[m['name']]!r} in {benchmarks.name}")
            else:
                quoted.append(m["name"])
        prose = re.sub(r"<!--\s*figure:[^>]*-->\s*" + NUMBER + rf"(?:\s?{UNIT})?", "", line)
        prose = re.sub(r"<!--.*?-->|\]\([^)]*\)", "", prose)
        bare += [f"{where}: {m[0]!r}" for m in BARE.finditer(prose)]

    @check(f"figures: every figure quoted in {readme.name} equals {benchmarks.name}")
    def _():
        require(not errors, "; ".join(errors))
        return f"{len(quoted)} quotes of {len(inline)} figures and {len(blocks)} blocks"

    @check(f"figures: no bare size, memory or time figure in {readme.name}")
    def _():
        require(not bare, "; ".join(bare) + ": quote it from BENCHMARKS.md (<!-- figure: NAME -->VALUE) "
                "or mark its block <!-- figures: none (why) --> if it is a setting, not a measurement")


def cmd_figures() -> None:
    readme_figures(ROOT / "README.md", ROOT / "BENCHMARKS.md")


# --------------------------------------------------------------------------------------
# Self-test: every check must fail on a broken sample, or a PASS above proves nothing.

# What: (sample, a phrase the failure must name), so that a sample failing for another reason
# does not count.
BROKEN = {
    "tinyproxy with a trailing comment": (
        "<!-- check: tinyproxy -->\n```\nPort 3128\nAllow 203.0.113.0/24   # egress\n```\n", "Syntax error on line 2"),
    "tinyproxy that lets every host through": (
        "<!-- check: tinyproxy -->\n```\nPort 3128\nAllow 203.0.113.0/24\nConnectPort 443\n```\n",
        "another host: 200 (want a refusal)"),
    "tinyproxy reading a filter the page does not show": (
        '<!-- check: tinyproxy -->\n```\nPort 3128\nFilter "/etc/tinyproxy/nowhere"\n```\n', "shows no"),
    "squid with a misspelt directive": (
        "<!-- check: squid -->\n```\nhttp_port 3128\nhttp_acess deny all\n```\n", "unrecognized: 'http_acess'"),
    "YAML with a bad indent": ("<!-- check: yaml -->\n```yaml\na:\n  b: 1\n c: 2\n```\n", "ParserError"),
    "Kubernetes with an unknown field": (
        "<!-- check: kubernetes -->\n```yaml\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\n"
        "spec: {containers: [{name: a, image: b, restartPolice: Always}]}\n```\n", "'restartPolice' was unexpected"),
    "Helm values with an unknown key": (
        "<!-- check: helm values.yaml -->\n```yaml\nwhitelister:\n  config:\n    bootstrapProxi: http://b:3128\n```\n",
        "bootstrapProxi"),
    "compose with an unknown service key": (
        "<!-- check: compose -->\n```yaml\nservices:\n  a: {image: x, imagee: y}\n```\n", "imagee"),
    "JSON with a trailing comma": ("<!-- check: json -->\n```json\n{\"a\": 1,}\n```\n", "JSONDecodeError"),
    "an env file with a shell command": (
        "<!-- check: env -->\n```\nSENDSMS_USERNAME=me\nexport X\n```\n", "line 2 is no NAME=VALUE"),
    "sh with an unclosed quote": ("<!-- check: sh -->\n```sh\necho 'oops\n```\n", "unexpected EOF"),
    "a block without a marker": ("```yaml\na: 1\n```\n", "a fenced block without"),
    "none without a reason": ("<!-- check: none -->\n```\nx\n```\n", "needs a reason"),
    "a marker above no fence": ("<!-- check: yaml -->\n\n```yaml\na: 1\n```\n", "not right above an opening fence"),
    "an unknown kind": ("<!-- check: toml -->\n```\na = 1\n```\n", "unknown kind 'toml'"),
}

# What: (BENCHMARKS.md, README.md, the phrase).
BENCHMARKS = "size: <!-- figure: size MB -->5.516\n\n<!-- figures: t -->\n| a | 1 s |\n"
BROKEN_FIGURES = {
    "a quote that differs": ("binary <!-- figure: size -->5.5 MB", "is '5.5 MB' here and '5.516 MB'"),
    "a bare figure": ("binary <!-- figure: size -->5.516 MB, idle 6.3 MiB", "'6.3 MiB': quote it"),
    "a quote of nothing": ("binary <!-- figure: sise -->5.516 MB", "sise is not defined"),
    "a copied table that differs": ("<!-- figures: t -->\n| a | 2 s |", "differs from"),
    "figures: none without a reason": ("<!-- figures: none -->\nwithin 5 s", "needs a reason"),
    "a line that starts with a quote": ("binary:\n<!-- figure: size -->5.516 MB", "ends its paragraph"),
}


def fails_with(what: str, phrase: str, run) -> None:
    """Runs checks silently (pc.results stays as it was); one of them must fail naming `phrase`."""
    before = len(pc.results)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        run()
    del pc.results[before:]
    reports = re.split(r"(?m)^(?=PASS  |FAIL  )", out.getvalue())
    lines = [" ".join(r.split()) for r in reports if r.startswith("FAIL") and phrase in r]

    @check(f"selftest: {what} fails")
    def _():
        require(lines, f"no failure names {phrase!r}: {out.getvalue().strip()[-400:]}")
        return lines[0].split(" ", 1)[1][:300]


def cmd_selftest(helm: str) -> None:
    with tempfile.TemporaryDirectory(prefix="check-docs-selftest-") as tmp:
        tmp = Path(tmp)
        for n, (what, (md, phrase)) in enumerate(BROKEN.items()):
            (tmp / f"sample-{n}.md").write_text(md)
            page = read_page(tmp / f"sample-{n}.md", "sample.md")
            (tmp / f"work-{n}").mkdir()
            fails_with(what, phrase, lambda: check_page(page, Context(page, tmp / f"work-{n}", helm)))
        (tmp / "B.md").write_text(BENCHMARKS)
        for what, (readme, phrase) in BROKEN_FIGURES.items():
            (tmp / "R.md").write_text(readme + "\n")
            fails_with(f"figures, {what}", phrase, lambda: readme_figures(tmp / "R.md", tmp / "B.md"))


def main() -> int:
    cmd, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if cmd == "snippets" and args:
        cmd_snippets(args[0], args[1:] or DOCS)
    elif cmd == "figures" and not args:
        cmd_figures()
    elif cmd == "selftest" and len(args) == 1:
        cmd_selftest(args[0])
    elif cmd == "all" and len(args) == 1:
        cmd_snippets(args[0], DOCS)
        cmd_figures()
        cmd_selftest(args[0])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return pc.summary("docs")


if __name__ == "__main__":
    sys.exit(main())
