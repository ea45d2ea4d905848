//! Real egress IP changes: `run` inside network namespaces of the test's own, the emulator
//! outside. Needs root and iproute2: CI has both; elsewhere the tests say loudly that they did
//! not run. The run-mode fault matrix lives here too.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::gateway::{app_client, assert_each_logged_once, percentiles, send, send_stream};
use harness::{
    Emulator, Env, Sidecar, Subnet, claim_subnet, fixed_http, require_root, require_tool, with,
};

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// A namespace joined to the host by a veth pair on 198.18.SUBNET.0/24; removed on drop.
/// The host side is .1, the bastion (already whitelisted) .100, the egress address .2 at first.
struct TestNet {
    namespace: String,
    host_link: String,
    ns_link: String,
    subnet: Subnet,
}

impl TestNet {
    fn create(subnet: u8) -> Option<TestNet> {
        require_tool("ip")?;
        if !require_root() {
            return None;
        }
        let subnet = claim_subnet(subnet);
        let id = format!("{}x{}", std::process::id() % 10_000, subnet.n);
        let net = TestNet {
            namespace: format!("ssw-test-{id}"),
            host_link: format!("sswh{id}"),
            ns_link: format!("sswn{id}"),
            subnet,
        };
        let (ns, host, inner) = (
            net.namespace.as_str(),
            net.host_link.as_str(),
            net.ns_link.as_str(),
        );
        ip(&["netns", "add", ns]);
        ip(&[
            "link", "add", host, "type", "veth", "peer", "name", inner, "netns", ns,
        ]);
        ip(&["addr", "add", &format!("{}/24", net.addr(1)), "dev", host]);
        ip(&["link", "set", host, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "set", inner, "up"]);
        net.change_address(&net.addr(2));
        Some(net)
    }

    fn addr(&self, host: u8) -> String {
        format!("198.18.{}.{host}", self.subnet.n)
    }

    fn bastion(&self) -> String {
        self.addr(100)
    }

    /// Makes `to` the namespace's egress address: the first address of the link is the source
    /// of its traffic, so the bastion address is added back after it.
    fn change_address(&self, to: &str) {
        let (ns, inner) = (self.namespace.as_str(), self.ns_link.as_str());
        ip(&["-n", ns, "addr", "flush", "dev", inner]);
        ip(&["-n", ns, "addr", "add", &format!("{to}/24"), "dev", inner]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", self.bastion()),
            "dev",
            inner,
        ]);
    }

    /// An emulator on the host side whose key already allows the bastion.
    async fn emulator(&self, extra: &[&str]) -> Emulator {
        let bastion = self.bastion();
        let args: Vec<&str> = ["--allow", bastion.as_str(), "--rate-limit", "0"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        Emulator::start_on(&format!("{}:0", self.addr(1)), &args).await
    }

    fn sidecar_env(&self, emu: &Emulator, extra: &[(&str, &str)]) -> Env {
        let base = with(
            emu.env(),
            &[
                ("SENDSMS_ALLOW_INSECURE_API_URL", "true"),
                ("SENDSMS_BOOTSTRAP_BIND", &self.bastion()),
                ("SENDSMS_POLL_INTERVAL", "1s"),
                ("SENDSMS_LOG_FORMAT", "json"),
                ("SENDSMS_API_BUDGET", "120"),
            ],
        );
        with(base, extra)
    }

    async fn sidecar(&self, env: &Env) -> Sidecar {
        let listen: SocketAddr = "0.0.0.0:9797".parse().expect("addr");
        let mut sidecar =
            Sidecar::start_with(&["ip", "netns", "exec", &self.namespace], env, listen).await;
        sidecar.status = format!("{}:9797", self.addr(2)).parse().expect("addr");
        sidecar
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_link])
            .status();
    }
}

#[tokio::test]
async fn a_real_egress_ip_change_is_followed() {
    let Some(net) = TestNet::create(0) else {
        return;
    };
    let (first, second, bastion) = (net.addr(2), net.addr(3), net.bastion());
    let emu = net.emulator(&["--propagation-delay", "1500"]).await;
    let mut sidecar = net.sidecar(&net.sidecar_env(&emu, &[])).await;

    sidecar.wait_readyz(200, Duration::from_secs(20)).await;
    assert_eq!(emu.whitelist(0).await, vec![bastion.clone(), first.clone()]);
    assert_eq!(emu.requests(0, "token_add_ip").await, (1, 0));
    let (code, _) = sidecar.request(reqwest::Method::POST, "/recheck").await;
    assert_eq!(code, 403, "a recheck from another host is refused");

    assert_idle_polls_make_no_call(&emu, &sidecar).await;

    net.change_address(&second);
    sidecar.status = format!("{second}:9797").parse().expect("addr");
    // The change itself, seen as it happens: not ready, for the new address by name (the
    // status server answers on the new address only once the change was made).
    let reason = sidecar.wait_readyz(503, Duration::from_secs(10)).await;
    assert_eq!(reason, format!("ipv4: {second} not verified yet"));
    sidecar.wait_readyz(200, Duration::from_secs(20)).await;
    assert_eq!(emu.whitelist(0).await, vec![bastion, first, second]);

    // Exactly: per address one refused read, one add, refused reads while the 1.5 s
    // propagation runs, and one accepted read; nothing else, nothing while idle.
    assert_idle_polls_make_no_call(&emu, &sidecar).await;
    assert_eq!(emu.requests(0, "token_add_ip").await, (2, 0));
    let (listed, refused) = emu.requests(0, "token_list_ips").await;
    assert_eq!(listed, 2, "one proof per address");
    assert!(
        refused >= 4,
        "each address was refused before it took effect: {refused}"
    );
    sidecar
        .wait_for_log("egress IP changed", Duration::from_secs(10))
        .await;
    let stopped = sidecar.terminate().await;
    assert_eq!(stopped.code, 0, "{stopped:?}");
    assert!(stopped.took < Duration::from_secs(5), "{stopped:?}");
}

/// Three polls of an unchanged address (however long they take) call nothing.
async fn assert_idle_polls_make_no_call(emu: &Emulator, sidecar: &Sidecar) {
    let calls = emu.api_requests().await;
    let detections = sidecar.counter("detections").await;
    sidecar
        .wait_counter("detections", detections + 3, Duration::from_secs(30))
        .await;
    assert_eq!(emu.api_requests().await, calls, "idle polls called the API");
}

/// A run-mode scenario: emulator flags, extra environment, and whether providers include a liar.
struct RunScenario {
    name: &'static str,
    emulator: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    liar: bool,
    dns_unreachable: bool,
}

const RUN_SCENARIOS: &[RunScenario] = &[
    RunScenario {
        name: "no fault",
        emulator: &[],
        env: &[],
        liar: false,
        dns_unreachable: false,
    },
    RunScenario {
        name: "500 ms latency",
        emulator: &["--latency", "500"],
        env: &[],
        liar: false,
        dns_unreachable: false,
    },
    RunScenario {
        name: "30% HTTP 502",
        emulator: &["--fail-rate", "0.3", "--fault", "http502"],
        env: &[],
        liar: false,
        dns_unreachable: false,
    },
    RunScenario {
        name: "30% dropped connections",
        emulator: &["--fail-rate", "0.3", "--fault", "drop"],
        env: &[],
        liar: false,
        dns_unreachable: false,
    },
    RunScenario {
        name: "30% malformed JSON",
        emulator: &["--fail-rate", "0.3", "--fault", "malformed-json"],
        env: &[],
        liar: false,
        dns_unreachable: false,
    },
    RunScenario {
        name: "30% 10 MiB bodies",
        emulator: &["--fail-rate", "0.3", "--fault", "huge-body"],
        env: &[],
        liar: false,
        dns_unreachable: false,
    },
    RunScenario {
        name: "3 s propagation delay",
        emulator: &["--propagation-delay", "3000"],
        env: &[],
        liar: false,
        dns_unreachable: false,
    },
    RunScenario {
        name: "state file unwritable",
        emulator: &[],
        env: &[("SENDSMS_STATE_FILE", "/proc/sendsms-whitelister/state.json")],
        liar: false,
        dns_unreachable: false,
    },
    RunScenario {
        name: "one provider lying",
        emulator: &[],
        env: &[],
        liar: true,
        dns_unreachable: false,
    },
    RunScenario {
        name: "DNS providers unreachable",
        emulator: &[],
        env: &[],
        liar: false,
        dns_unreachable: true,
    },
];

const CHANGES: u8 = 3;

/// Follows CHANGES address changes; returns the seconds from each change to ready, and checks
/// on every /status read that a ready sidecar's verified address is on the effective whitelist.
async fn run_scenario(index: usize) -> Option<Vec<f64>> {
    let scenario = &RUN_SCENARIOS[index];
    let net = TestNet::create(10 + index as u8)?;
    let emu = net.emulator(scenario.emulator).await;
    let mut providers = emu.providers();
    if scenario.liar {
        let liar = fixed_http(
            &format!("{}:0", net.addr(1)),
            b"198.18.250.250\n".to_vec(),
            Duration::ZERO,
        )
        .await;
        providers = format!("{providers},http://{liar}/#liar");
    }
    if scenario.dns_unreachable {
        providers = format!(
            "http://{0}/ip#http-a,http://{0}/ip#http-b,dns://{1}:9/a.test?type=A#dns-a,dns://{1}:9/b.test?type=TXT#dns-b",
            emu.addr,
            net.addr(1)
        );
    }
    let mut extra: Vec<(&str, &str)> = vec![("SENDSMS_IP_PROVIDERS", providers.as_str())];
    extra.extend_from_slice(scenario.env);
    let mut sidecar = net.sidecar(&net.sidecar_env(&emu, &extra)).await;
    let mut times = Vec::new();
    for change in 0..=CHANGES {
        let address = net.addr(2 + change);
        let started = Instant::now();
        if change > 0 {
            net.change_address(&address);
        }
        sidecar.status = format!("{address}:9797").parse().expect("addr");
        let deadline = started + Duration::from_secs(60);
        loop {
            let (code, body) = sidecar.get("/status").await;
            if code == 200 {
                let status: serde_json::Value = serde_json::from_str(&body).expect("status json");
                let verified = status["families"]["ipv4"]["verified_ip"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned();
                if status["ready"] == true {
                    let whitelist = emu.whitelist(0).await;
                    assert!(
                        whitelist.contains(&verified),
                        "{}: ready with {verified}, which the key does not work from ({whitelist:?})",
                        scenario.name
                    );
                    if verified == address {
                        break;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{}: {address} never verified:\n{}",
                scenario.name,
                sidecar.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        times.push(started.elapsed().as_secs_f64());
    }
    let whitelist = emu.whitelist(0).await;
    assert!(
        !whitelist.iter().any(|ip| ip.starts_with("198.18.250.")),
        "{}: the liar got in",
        scenario.name
    );
    let stopped = sidecar.terminate().await;
    assert_eq!(stopped.code, 0, "{}: {stopped:?}", scenario.name);
    assert!(
        stopped.took < Duration::from_secs(5),
        "{}: {stopped:?}",
        scenario.name
    );
    Some(times)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_fault_matrix() {
    if TestNet::create(9).is_none() {
        return;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..RUN_SCENARIOS.len() {
        tasks.spawn(async move { (index, run_scenario(index).await) });
    }
    let mut rows: Vec<Option<Vec<f64>>> = vec![None; RUN_SCENARIOS.len()];
    while let Some(joined) = tasks.join_next().await {
        let (index, times) = joined.expect("a scenario failed");
        rows[index] = times;
    }
    let mut table = String::from(
        "| scenario | outcome | first whitelisting s | after each of 3 changes s | verified ⇒ works from it | key in output | exit on SIGTERM |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for (scenario, times) in RUN_SCENARIOS.iter().zip(rows) {
        let times = times.expect("every scenario ran");
        let after: Vec<String> = times[1..].iter().map(|t| format!("{t:.2}")).collect();
        table.push_str(&format!(
            "| {} | verified every address | {:.2} | {} | held | never | 0 within 5 s |\n",
            scenario.name,
            times[0],
            after.join(", ")
        ));
    }
    println!("{table}");
    if let Ok(path) = std::env::var("FAULT_MATRIX_RUN_OUT") {
        std::fs::write(&path, table).expect("write the table");
    }
}

/// Runs `work` on a thread of its own inside network namespace `namespace` (setns), on a
/// runtime of its own: the sockets it opens are the namespace's.
fn in_namespace<F: Future + 'static>(
    namespace: &str,
    work: impl FnOnce() -> F + Send + 'static,
) -> std::thread::JoinHandle<F::Output>
where
    F::Output: Send + 'static,
{
    let path = format!("/var/run/netns/{namespace}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("the namespace's handle");
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns into the test's namespace");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work())
    })
}

/// The gateway's promise on a real host: a sender with no credentials, in the namespace, sends
/// 600 messages at 25 a second through the gateway on its loopback while the namespace's
/// egress address changes 3 times (1.5 s propagation). The emulator logs each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_loses_and_repeats_nothing_across_three_address_changes() {
    const MESSAGES: usize = 600;
    const PER_SECOND: f64 = 25.0;
    let Some(net) = TestNet::create(30) else {
        return;
    };
    let emu = net.emulator(&["--propagation-delay", "1500"]).await;
    let env = net.sidecar_env(&emu, &[("SENDSMS_GATEWAY_LISTEN", "0.0.0.0:9798")]);
    let mut sidecar = net.sidecar(&env).await;
    sidecar.wait_readyz(200, Duration::from_secs(20)).await;

    // Another host reaching the gateway without a token is refused.
    let outside: SocketAddr = format!("{}:9798", net.addr(2)).parse().expect("addr");
    let refused = send(&app_client(), outside, "from-another-host", &[], None).await;
    assert_eq!(
        (refused.code, refused.status()),
        (403, Some(-8)),
        "{}",
        refused.body
    );

    let sender = in_namespace(&net.namespace, move || {
        send_stream(
            SocketAddr::from(([127, 0, 0, 1], 9798)),
            "netns",
            MESSAGES,
            PER_SECOND,
        )
    });
    let started = Instant::now();
    for (at, host) in [(5, 3), (11, 4), (17, 5)] {
        tokio::time::sleep_until((started + Duration::from_secs(at)).into()).await;
        net.change_address(&net.addr(host));
    }
    sidecar.status = format!("{}:9797", net.addr(5)).parse().expect("addr");
    let sent = tokio::task::spawn_blocking(move || sender.join())
        .await
        .expect("join")
        .expect("the sender");
    assert_eq!(sent.len(), MESSAGES);
    let sent_for = sent.last().map_or(0.0, |_| started.elapsed().as_secs_f64());

    let unknown: Vec<_> = sent.iter().filter(|s| s.code == 502).collect();
    let odd: Vec<_> = sent
        .iter()
        .filter(|s| s.code != 502 && !(s.code == 200 && s.status() == Some(1)))
        .collect();
    assert!(
        odd.is_empty(),
        "neither sent nor an unknown outcome: {odd:#?}"
    );
    assert_each_logged_once(&emu.state().await, &sent);

    let holds: Vec<f64> = sent
        .iter()
        .filter_map(|s| s.held_ms)
        .map(|ms| ms as f64 / 1000.0)
        .collect();
    assert!(
        holds.len() >= 3,
        "each change held some sends: {}",
        holds.len()
    );
    let (p50, p99, max) = percentiles(&holds);
    let status = sidecar.status().await;
    assert_eq!(status["counters"]["ip_changes"], 3, "{status}");
    let summary = format!(
        "{MESSAGES} messages at {PER_SECOND} a second over {sent_for:.1} s, 3 address changes (1.5 s propagation): \
         each logged once; {held} held, hold p50 {p50:.2} s, p99 {p99:.2} s, max {max:.2} s; \
         {unknown} outcome unknown (502, logged once); gateway calls {calls}",
        held = holds.len(),
        unknown = unknown.len(),
        calls = status["gateway"]["calls"],
    );
    println!("{summary}");
    if let Ok(path) = std::env::var("GATEWAY_NETNS_OUT") {
        std::fs::write(&path, format!("{summary}\n")).expect("write the summary");
    }
    let stopped = sidecar.terminate().await;
    assert_eq!(stopped.code, 0, "{stopped:?}");
    assert!(stopped.took < Duration::from_secs(5), "{stopped:?}");
}
