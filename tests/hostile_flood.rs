//! A flood of hostile connections from another host (issue 14, defect 1): slowloris and
//! oversized headers from 16 addresses of a network namespace of the test's own, against the
//! status server, while `/healthz` is timed from the host. Alone in its test binary, so no
//! other test competes for the two cores while it measures. Needs root and iproute2: without
//! them it says NOT RUN, and fails in CI. `bench/hostile.sh` runs it with the release profile.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use harness::{Emulator, Sidecar, free_port, require_root, require_tool, with};

/// A namespace joined to the host by a veth pair on 198.18.SUBNET.0/24: the host side is .1,
/// the attacker has `SOURCES` addresses from .10 up, so it is many peers, not one.
struct FloodNet {
    namespace: String,
    host_link: String,
    subnet: u8,
}

const SOURCES: u8 = 16;

/// The slowest `/healthz` answer allowed under the flood: 100 ms for the release build (the
/// issue's target, measured by `bench/hostile.sh`). A debug build on two cores shared with
/// 2,000 attackers (and, on a developer's machine, other builds) gets 300 ms: a starved
/// process, not the server's design, is what it would measure above that. Before the
/// hardening, probes took over a second or failed outright.
const LATENCY_BOUND: Duration = if cfg!(debug_assertions) {
    Duration::from_millis(300)
} else {
    Duration::from_millis(100)
};

/// How soon an attacker opens a new connection after the server closed its last one: 2,000
/// attackers make up to 2,000 new connections a second.
const RECONNECT: Duration = Duration::from_secs(1);

impl FloodNet {
    fn create(subnet: u8) -> Option<FloodNet> {
        require_tool("ip")?;
        if !require_root() {
            return None;
        }
        let id = format!("{}h{subnet}", std::process::id() % 10_000);
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
        format!("198.18.{}.{host}", self.subnet)
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

/// Defect 1: 2,000 slowloris and oversized-header connections from another host (16 source
/// addresses) took RSS to hundreds of MB, stayed open forever and starved `/healthz`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_sent_and_oversized_requests_from_another_host_is_bounded() {
    let Some(net) = FloodNet::create(40) else {
        return;
    };
    let connections: usize = std::env::var("HOSTILE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let seconds: u64 = std::env::var("HOSTILE_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    // The key already allows this host: the sidecar is ready after one read.
    let emu = Emulator::start(&["--allow", "127.0.0.1", "--rate-limit", "0"]).await;
    let listen: SocketAddr = format!("{}:{}", net.addr(1), free_port())
        .parse()
        .expect("listen");
    let env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", "127.0.0.2")]);
    let sidecar = Sidecar::start_with(&[], &env, listen).await;
    sidecar.wait_readyz(200, Duration::from_secs(20)).await;
    let pid = sidecar.pid();
    let idle_rss = rss_kib(pid);

    let length = Duration::from_secs(seconds);
    let sources = net.sources();
    let attacker = net.inside(move || flood(listen, sources, connections, length));
    // Probes every 50 ms from the host for the whole flood, RSS sampled with each.
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut max_rss = idle_rss;
    while started.elapsed() < length {
        let (code, took) = probe(listen).await;
        if code != 200 || took >= LATENCY_BOUND {
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
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let table = format!(
        "| figure | value |\n|---|---|\n\
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
    println!("{table}");
    if let Ok(path) = std::env::var("HOSTILE_REPORT") {
        std::fs::write(path, &table).expect("write the report");
    }
    assert!(
        failures.is_empty(),
        "/healthz failed under the flood: {failures:?}\n{table}"
    );
    assert!(
        p(1.0) < LATENCY_BOUND,
        "/healthz slower than {LATENCY_BOUND:?}:\n{table}"
    );
    // A debug build starts at about 20 MiB (its own pages); the release build at about 6.
    assert!(
        max_rss - idle_rss < 12 * 1024,
        "RSS grew by 12 MiB or more:\n{table}"
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
    assert_eq!(sidecar.terminate().await.code, 0);
}
