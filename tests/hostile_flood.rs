//! A flood of hostile connections from another host (issue 14, defect 1): slowloris and
//! oversized headers from 16 addresses of a network namespace of the test's own, against the
//! status server and against the gateway, while `/healthz` is timed from the host. The two
//! floods take turns and are alone in their test binary, so nothing else competes for the two
//! cores while they measure. Needs root and iproute2: without them each says NOT RUN, and
//! fails in CI. `bench/hostile.sh` runs them with the release profile.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::gateway::{app_client, send};
use harness::{
    Emulator, Sidecar, Subnet, claim_subnet, free_port, require_root, require_tool, with,
};

/// A namespace joined to the host by a veth pair on 198.18.SUBNET.0/24 (claimed: the first free
/// one from the preferred): the host side is .1, the attacker has `SOURCES` addresses from .10
/// up, so it is many peers, not one.
struct FloodNet {
    namespace: String,
    host_link: String,
    subnet: Subnet,
}

const SOURCES: u8 = 16;

/// A `/healthz` answer slower than this is a failed probe: the kubelet's default probe
/// timeout (the chart's is 2 s), so what the test asserts is that the pod is never killed
/// by the flood. How fast the probes are (the goal: within 100 ms) is a benchmark
/// figure, measured on the release build by `bench/hostile.sh`: on two cores shared with
/// 2,000 attackers and, in the 20-run soak, a cargo-mutants run and a second flood, a debug
/// build's slowest probe reached 663 ms, which a timed bound here would call a failure.
/// Before the hardening, probes took over a second or failed outright.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How soon an attacker opens a new connection after the server closed its last one: 2,000
/// attackers make up to 2,000 new connections a second.
const RECONNECT: Duration = Duration::from_secs(1);

impl FloodNet {
    fn create(subnet: u8) -> Option<FloodNet> {
        require_tool("ip")?;
        if !require_root() {
            return None;
        }
        let subnet = claim_subnet(subnet);
        let id = format!("{}h{}", std::process::id() % 10_000, subnet.n);
        let net = FloodNet {
            namespace: format!("ssw-flood-{id}"),
            host_link: format!("sswfh{id}"),
            subnet,
        };
        let inner = format!("sswfn{id}");
        let ip = |args: &[&str]| {
            let ok = Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip {args:?}");
        };
        let (ns, host) = (net.namespace.as_str(), net.host_link.as_str());
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", &inner, "netns", ns,
        ]);
        ip(&["addr", "add", &format!("{}/24", net.addr(1)), "dev", host]);
        ip(&["link", "set", host, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "set", &inner, "up"]);
        for source in net.sources() {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{source}/24"),
                "dev",
                &inner,
            ]);
        }
        Some(net)
    }

    fn addr(&self, host: u8) -> String {
        format!("198.18.{}.{host}", self.subnet.n)
    }

    fn sources(&self) -> Vec<IpAddr> {
        (10..10 + SOURCES)
            .map(|h| self.addr(h).parse().expect("address"))
            .collect()
    }

    /// Runs `work` on a thread inside the namespace: every socket it opens lives there.
    fn inside<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.namespace);
        std::thread::spawn(move || {
            let namespace = std::fs::File::open(&path).expect("the namespace");
            // SAFETY: setns changes only this thread's network namespace.
            let joined = unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
            work()
        })
    }
}

impl Drop for FloodNet {
    fn drop(&mut self) {
        for (what, name) in [("netns", &self.namespace), ("link", &self.host_link)] {
            // Deleting the namespace takes the veth pair with it: the second may find nothing.
            let _ = Command::new("ip")
                .args([what, "del", name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// What the attacker saw: connections opened, and how long each half-sent request stayed open
/// before the server closed it.
#[derive(Default)]
struct FloodReport {
    opened: u64,
    refused: u64,
    half_sent_open_max: Duration,
    half_sent_closed: u64,
    half_sent_still_open: u64,
}

/// `connections` attackers, half of them slowloris (a request head never finished), half
/// sending a 64 KiB header, each reconnecting as soon as it is closed, for `length`.
fn flood(
    target: SocketAddr,
    sources: Vec<IpAddr>,
    connections: usize,
    length: Duration,
) -> FloodReport {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("attacker runtime");
    let report = Arc::new(Mutex::new(FloodReport::default()));
    runtime.block_on(async {
        let end = tokio::time::Instant::now() + length;
        let mut attackers = tokio::task::JoinSet::new();
        for i in 0..connections {
            let source = sources[i % sources.len()];
            let report = Arc::clone(&report);
            let ramp = Duration::from_secs(1).mul_f64(i as f64 / connections as f64);
            attackers.spawn(async move {
                let oversized = i % 2 == 1;
                tokio::time::sleep(ramp).await;
                while tokio::time::Instant::now() < end {
                    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                        return;
                    };
                    if socket.bind(SocketAddr::new(source, 0)).is_err() {
                        return;
                    }
                    let connected =
                        tokio::time::timeout(Duration::from_secs(2), socket.connect(target)).await;
                    let Ok(Ok(mut stream)) = connected else {
                        report.lock().expect("report").refused += 1;
                        tokio::time::sleep(RECONNECT).await;
                        continue;
                    };
                    let opened = tokio::time::Instant::now();
                    report.lock().expect("report").opened += 1;
                    let head = b"GET /status HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
                    let request = if oversized {
                        [head, vec![b'a'; 64 * 1024], b"\r\n\r\n".to_vec()].concat()
                    } else {
                        head
                    };
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), stream.write_all(&request))
                            .await;
                    let mut sink = [0u8; 1024];
                    let closed = tokio::time::timeout_at(end + Duration::from_secs(15), async {
                        while let Ok(n) = stream.read(&mut sink).await {
                            if n == 0 {
                                break;
                            }
                        }
                    })
                    .await;
                    if !oversized {
                        let mut r = report.lock().expect("report");
                        match closed {
                            Ok(()) => {
                                r.half_sent_closed += 1;
                                r.half_sent_open_max = r.half_sent_open_max.max(opened.elapsed());
                            }
                            Err(_) => r.half_sent_still_open += 1,
                        }
                    }
                    tokio::time::sleep(RECONNECT).await;
                }
            });
        }
        while attackers.join_next().await.is_some() {}
    });
    Arc::try_unwrap(report)
        .ok()
        .and_then(|m| m.into_inner().ok())
        .unwrap_or_default()
}

/// One `/healthz` on a fresh connection: (HTTP status, time to the whole answer).
async fn probe(target: SocketAddr) -> (u16, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(2), async {
        let mut stream = tokio::net::TcpStream::connect(target).await.ok()?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.ok()?;
        let head = String::from_utf8_lossy(&answer).into_owned();
        head.split_whitespace().nth(1)?.parse::<u16>().ok()
    })
    .await;
    (answer.ok().flatten().unwrap_or(0), started.elapsed())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The listener the attackers flood, on the host side of the veth pair.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Target {
    /// `SENDSMS_LISTEN`: the status server itself, so the probes share its connection cap.
    StatusServer,
    /// `SENDSMS_GATEWAY_LISTEN` (with a token, as beyond loopback it must have); the status
    /// server stays on loopback, so the probes measure the process, not the flooded listener.
    Gateway,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::StatusServer => "status server",
            Target::Gateway => "gateway",
        }
    }

    /// Each flood has its own subnet, so its namespace and links never meet the other's.
    fn subnet(self) -> u8 {
        match self {
            Target::StatusServer => 40,
            Target::Gateway => 41,
        }
    }

    /// How far RSS may grow under the flood, in KiB: each connection the listener admits
    /// costs 15 to 30 KiB (hyper's read and write buffers, and what closed ones leave behind).
    /// The status server admits 256; the gateway 512 from beyond loopback, so its bound with
    /// the release build's 7 MiB idle stays under the 32 MiB.
    fn rss_growth_bound_kib(self) -> u64 {
        match self {
            Target::StatusServer => 12 * 1024,
            Target::Gateway => 20 * 1024,
        }
    }

    /// Where `bench/hostile.sh` wants this flood's table.
    fn report_var(self) -> &'static str {
        match self {
            Target::StatusServer => "HOSTILE_REPORT",
            Target::Gateway => "HOSTILE_GATEWAY_REPORT",
        }
    }
}

const GATEWAY_TOKEN: &str = "gw-flood-token-6d2e0b9a41c7f358e0a2";

/// The floods take turns: each measures a process alone on the cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `run` with `target` on the veth's host side, floods it with `HOSTILE_CONNECTIONS`
/// attackers (default 2,000) for `HOSTILE_SECONDS` (default 12) while `/healthz` is probed,
/// prints the figures and asserts the bounds.
async fn a_flood_against(target: Target) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let Some(net) = FloodNet::create(target.subnet()) else {
        return;
    };
    let connections = env_number("HOSTILE_CONNECTIONS", 2000) as usize;
    let seconds = env_number("HOSTILE_SECONDS", 12);
    // The key already allows this host: the sidecar is ready after one read.
    let emu = Emulator::start(&["--allow", "127.0.0.1", "--rate-limit", "0"]).await;
    let exposed: SocketAddr = format!("{}:{}", net.addr(1), free_port())
        .parse()
        .expect("listen");
    let env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", "127.0.0.2")]);
    let (sidecar, status) = match target {
        Target::StatusServer => (Sidecar::start_with(&[], &env, exposed).await, exposed),
        Target::Gateway => {
            let status: SocketAddr = ([127, 0, 0, 1], free_port()).into();
            let exposed = exposed.to_string();
            let env = with(
                env,
                &[
                    ("SENDSMS_GATEWAY_LISTEN", &exposed),
                    ("SENDSMS_GATEWAY_TOKEN", GATEWAY_TOKEN),
                ],
            );
            (Sidecar::start_with(&[], &env, status).await, status)
        }
    };
    sidecar.wait_readyz(200, Duration::from_secs(20)).await;
    let pid = sidecar.pid();
    let idle_rss = rss_kib(pid);

    let length = Duration::from_secs(seconds);
    let sources = net.sources();
    let attacker = net.inside(move || flood(exposed, sources, connections, length));
    // Probes every 50 ms from the host for the whole flood, RSS sampled with each.
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut max_rss = idle_rss;
    while started.elapsed() < length {
        let (code, took) = probe(status).await;
        if code != 200 || took >= PROBE_TIMEOUT {
            failures.push(format!(
                "{:.1}s: HTTP {code}",
                started.elapsed().as_secs_f64()
            ));
        }
        latencies.push(took);
        max_rss = max_rss.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = tokio::task::spawn_blocking(move || attacker.join())
        .await
        .expect("join")
        .expect("the attacker");
    max_rss = max_rss.max(rss_kib(pid));
    // The gateway still does its work: an app's call from the host, right after the flood.
    let served = if target == Target::Gateway {
        let bearer = format!("Bearer {GATEWAY_TOKEN}");
        let sent = send(
            &app_client(),
            exposed,
            "after the flood",
            &[],
            Some(&bearer),
        )
        .await;
        Some((sent.code, sent.status()))
    } else {
        None
    };
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut table = format!(
        "| figure | {} |\n|---|---|\n\
         | hostile connections held open at once (attackers) | {connections} from {SOURCES} addresses |\n\
         | flood length | {seconds} s |\n\
         | connections the attackers opened | {} |\n\
         | connection attempts refused or timed out | {} |\n\
         | RSS idle, before the flood | {:.1} MiB |\n\
         | RSS peak during the flood | {:.1} MiB |\n\
         | /healthz probes (every 50 ms, fresh connection) | {} |\n\
         | /healthz failed | {} |\n\
         | /healthz latency p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |\n\
         | half-sent requests closed by the server | {} |\n\
         | longest a half-sent request stayed open | {:.2} s (header timeout 5 s) |\n\
         | half-sent requests still open at the end | {} |\n",
        target.name(),
        report.opened,
        report.refused,
        idle_rss as f64 / 1024.0,
        max_rss as f64 / 1024.0,
        latencies.len(),
        failures.len(),
        ms(p(0.5)),
        ms(p(0.99)),
        ms(p(1.0)),
        report.half_sent_closed,
        report.half_sent_open_max.as_secs_f64(),
        report.half_sent_still_open,
    );
    if let Some((code, status)) = served {
        let status = status.map_or("none".to_owned(), |s| s.to_string());
        table.push_str(&format!(
            "| an app's call through the gateway right after the flood | HTTP {code}, sendSMS status {status} |\n"
        ));
    }
    println!("{table}");
    if let Ok(path) = std::env::var(target.report_var()) {
        std::fs::write(path, &table).expect("write the report");
    }
    assert!(
        failures.is_empty(),
        "/healthz failed under the flood: {failures:?}\n{table}"
    );
    // A debug build starts at about 20 MiB (its own pages); the release build at about 6.
    let growth = target.rss_growth_bound_kib();
    assert!(
        max_rss - idle_rss < growth,
        "RSS grew by {} MiB or more:\n{table}",
        growth / 1024
    );
    if !cfg!(debug_assertions) {
        assert!(max_rss < 32 * 1024, "RSS over 32 MiB:\n{table}");
    }
    assert!(
        report.opened >= connections as u64,
        "the flood did not happen:\n{table}"
    );
    assert_eq!(report.half_sent_still_open, 0, "{table}");
    assert!(
        report.half_sent_open_max < Duration::from_millis(6500),
        "a half-sent request outlived the 5 s header timeout:\n{table}"
    );
    if let Some(served) = served {
        assert_eq!(
            served,
            (200, Some(1)),
            "the gateway after the flood:\n{table}"
        );
    }
    assert_eq!(sidecar.terminate().await.code, 0);
}

/// Defect 1: 2,000 slowloris and oversized-header connections from another host (16 source
/// addresses) took RSS to hundreds of MB, stayed open forever and starved `/healthz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_sent_and_oversized_requests_from_another_host_is_bounded() {
    a_flood_against(Target::StatusServer).await;
}

/// The same flood against the gateway's listener, which admits far more connections (every
/// held call is one): its memory, the process's liveness and its timeouts stay bounded, and it
/// still forwards an app's call afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_against_the_gateway_is_bounded() {
    a_flood_against(Target::Gateway).await;
}
