//! The fault matrix: `once` against misbehaving APIs and providers, 20 runs per scenario, two
//! invariants checked on every run, and a table of outcomes and times.
//! `bench/fault-matrix.sh` regenerates docs/fault-matrix.md from this and the run-mode matrix.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{KEY, USERNAME, fixed_http, run};
use sendsms_whitelister::emulator::{self, Fault, KeyKind, ListFormat, Settings};

const RUNS: usize = 20;
const BASTION: &str = "127.0.0.2";
const EGRESS: &str = "127.0.0.1";
const LIAR_SAYS: &str = "127.0.0.9";

/// What a scenario changes: the emulator's settings, the environment, the exit codes allowed.
struct Scenario {
    name: &'static str,
    emulator: fn(&mut Settings, usize),
    env: fn(&Ctx) -> Vec<(&'static str, String)>,
    allowed: &'static [i32],
}

/// Addresses of one run's emulator and helpers.
struct Ctx {
    http: SocketAddr,
    dns: SocketAddr,
    liar: SocketAddr,
    /// A TCP port held bound but not listening: connections are refused, and no other run
    /// can take it meanwhile.
    refused_tcp: SocketAddr,
    /// A UDP port held bound and never read: queries to it go unanswered.
    silent_udp: SocketAddr,
}

impl Ctx {
    fn honest(&self) -> String {
        format!(
            "http://{}/ip#emulator-http,dns://{}/whoami.test?type=A#emulator-dns",
            self.http, self.dns
        )
    }
}

fn none(_: &mut Settings, _: usize) {}
fn no_env(_: &Ctx) -> Vec<(&'static str, String)> {
    Vec::new()
}
fn faults(settings: &mut Settings, fault: Fault, rate: f64) {
    settings.fault = fault;
    settings.fail_rate = rate;
}

/// At 30% faults, 15 s of backoff (about five attempts) fails once in a few hundred phases; a
/// minute (nine attempts) makes a spurious failure of the matrix vanishingly rare. Each failed
/// attempt spends a call of the budget, and a budget wait never runs past the verify timeout,
/// so the budget is raised out of the way: faults are what these rows are about.
fn random_faults_env(_: &Ctx) -> Vec<(&'static str, String)> {
    vec![
        ("SENDSMS_VERIFY_TIMEOUT", "60s".into()),
        ("SENDSMS_API_BUDGET", "60".into()),
    ]
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "no fault",
        emulator: none,
        env: no_env,
        allowed: &[0],
    },
    Scenario {
        name: "500 ms latency on every API answer",
        emulator: |s, _| s.latency = Duration::from_millis(500),
        env: no_env,
        allowed: &[0],
    },
    Scenario {
        name: "30% HTTP 502",
        emulator: |s, _| faults(s, Fault::Http502, 0.3),
        env: random_faults_env,
        allowed: &[0],
    },
    Scenario {
        name: "30% dropped connections",
        emulator: |s, _| faults(s, Fault::Drop, 0.3),
        env: random_faults_env,
        allowed: &[0],
    },
    Scenario {
        name: "hanging API (no answer at all)",
        emulator: |s, _| faults(s, Fault::Hang, 1.0),
        env: no_env,
        allowed: &[5],
    },
    Scenario {
        name: "30% malformed JSON",
        emulator: |s, _| faults(s, Fault::MalformedJson, 0.3),
        env: random_faults_env,
        allowed: &[0],
    },
    Scenario {
        name: "30% 10 MiB bodies",
        emulator: |s, _| faults(s, Fault::HugeBody, 0.3),
        env: random_faults_env,
        allowed: &[0],
    },
    Scenario {
        name: "details in every shape (strings, objects, map, csv)",
        emulator: |s, run| {
            s.list_format = [
                ListFormat::Strings,
                ListFormat::Objects,
                ListFormat::Map,
                ListFormat::Csv,
            ][run % 4]
        },
        env: no_env,
        allowed: &[0],
    },
    Scenario {
        name: "30% unknown status code (-1024)",
        emulator: |s, _| faults(s, Fault::UnknownStatus, 0.3),
        env: no_env,
        allowed: &[0, 4, 5],
    },
    Scenario {
        name: "rate-limit answers for a whole minute",
        emulator: |s, _| s.rate_limited_for = Duration::from_secs(60),
        env: |_| vec![("SENDSMS_VERIFY_TIMEOUT", "100s".into())],
        allowed: &[0],
    },
    Scenario {
        name: "10 s propagation delay",
        emulator: |s, _| s.propagation_delay = Duration::from_secs(10),
        env: |_| vec![("SENDSMS_VERIFY_TIMEOUT", "40s".into())],
        allowed: &[0],
    },
    Scenario {
        name: "DNS providers unreachable",
        emulator: none,
        env: |c| {
            let closed = c.silent_udp;
            vec![(
                "SENDSMS_IP_PROVIDERS",
                format!(
                    "http://{0}/ip#http-a,http://{0}/ip#http-b,dns://{closed}/a.test?type=A#dns-a,\
                     dns://{closed}/b.test?type=TXT&class=CH#dns-b",
                    c.http
                ),
            )]
        },
        allowed: &[0],
    },
    Scenario {
        name: "one provider lying",
        emulator: none,
        env: |c| {
            vec![(
                "SENDSMS_IP_PROVIDERS",
                format!("{},http://{}/#liar", c.honest(), c.liar),
            )]
        },
        allowed: &[0],
    },
    Scenario {
        name: "bootstrap proxy down",
        emulator: none,
        env: |c| {
            vec![
                ("SENDSMS_BOOTSTRAP_BIND", String::new()),
                (
                    "SENDSMS_BOOTSTRAP_PROXY",
                    format!("http://{}", c.refused_tcp),
                ),
            ]
        },
        allowed: &[5],
    },
];

/// One run's result and whether both invariants held.
struct Outcome {
    code: i32,
    seconds: f64,
    verified_only_if_working: bool,
}

async fn one_run(scenario: &Scenario, index: usize) -> Outcome {
    let mut settings = Settings {
        username: USERNAME.into(),
        keys: vec![(KeyKind::Default, KEY.into())],
        allow: vec![BASTION.parse().expect("ip")],
        rate_limit: 0,
        ..Settings::default()
    };
    (scenario.emulator)(&mut settings, index);
    let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let emu = emulator::start(local, Some(local), settings)
        .await
        .expect("emulator");
    let liar = fixed_http(
        "127.0.0.1:0",
        format!("{LIAR_SAYS}\n").into_bytes(),
        Duration::ZERO,
    )
    .await;
    let refused = tokio::net::TcpSocket::new_v4().expect("socket");
    refused.bind(local).expect("bind");
    let silent = tokio::net::UdpSocket::bind(local).await.expect("udp");
    let ctx = Ctx {
        http: emu.addr,
        dns: emu.dns_addr.expect("dns"),
        liar,
        refused_tcp: refused.local_addr().expect("addr"),
        silent_udp: silent.local_addr().expect("addr"),
    };
    let mut env = vec![
        ("SENDSMS_USERNAME", USERNAME.to_owned()),
        ("SENDSMS_API_KEY", KEY.to_owned()),
        ("SENDSMS_API_URL", format!("http://{}/json", ctx.http)),
        ("SENDSMS_IP_PROVIDERS", ctx.honest()),
        ("SENDSMS_ALLOW_NON_PUBLIC_IPS", "true".to_owned()),
        ("SENDSMS_BOOTSTRAP_BIND", BASTION.to_owned()),
        ("SENDSMS_VERIFY_TIMEOUT", "15s".to_owned()),
        ("SENDSMS_REQUEST_TIMEOUT", "2s".to_owned()),
        ("SENDSMS_LOG_FORMAT", "json".to_owned()),
    ];
    for (name, value) in (scenario.env)(&ctx) {
        env.retain(|(k, _)| *k != name);
        if !value.is_empty() {
            env.push((name, value));
        }
    }
    let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    // `run` fails the test if the key shows up in any output: the second invariant.
    let result = run(&["once"], &env).await;
    let whitelist: Vec<String> = emu.state()["keys"][0]["whitelist"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    emu.shutdown();
    // A default key works from exactly the addresses on its effective whitelist, so: exit 0
    // must mean the egress address is on it, and nothing but the bastion and the egress ever is.
    let works_from_egress = whitelist.iter().any(|ip| ip == EGRESS);
    let only_true_addresses = whitelist.iter().all(|ip| ip == BASTION || ip == EGRESS);
    Outcome {
        code: result.code,
        seconds: result.elapsed.as_secs_f64(),
        verified_only_if_working: only_true_addresses && (result.code != 0 || works_from_egress),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix() {
    let slots = Arc::new(tokio::sync::Semaphore::new(48));
    let mut tasks = tokio::task::JoinSet::new();
    for (number, _) in SCENARIOS.iter().enumerate() {
        for index in 0..RUNS {
            let slots = Arc::clone(&slots);
            tasks.spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore");
                (number, one_run(&SCENARIOS[number], index).await)
            });
        }
    }
    let mut results: Vec<Vec<Outcome>> = SCENARIOS.iter().map(|_| Vec::new()).collect();
    while let Some(joined) = tasks.join_next().await {
        let (number, outcome) = joined.expect("a run panicked (a leaked key fails here)");
        results[number].push(outcome);
    }

    let mut table = String::from(
        "| scenario | runs | exit codes | median s | max s | verified ⇒ works from it | key in output |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut failures = Vec::new();
    for (scenario, outcomes) in SCENARIOS.iter().zip(&results) {
        let mut codes: Vec<i32> = outcomes.iter().map(|o| o.code).collect();
        codes.sort_unstable();
        let mut summary: Vec<String> = Vec::new();
        for code in codes
            .iter()
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
        {
            summary.push(format!(
                "{code}×{}",
                codes.iter().filter(|c| **c == code).count()
            ));
        }
        let mut seconds: Vec<f64> = outcomes.iter().map(|o| o.seconds).collect();
        seconds.sort_by(f64::total_cmp);
        let held = outcomes.iter().all(|o| o.verified_only_if_working);
        table.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {} | never |\n",
            scenario.name,
            outcomes.len(),
            summary.join(", "),
            seconds[seconds.len() / 2],
            seconds[seconds.len() - 1],
            if held { "held" } else { "VIOLATED" },
        ));
        if !held {
            failures.push(format!(
                "{}: an address was verified that the direct path does not work from",
                scenario.name
            ));
        }
        if let Some(bad) = codes.iter().find(|c| !scenario.allowed.contains(c)) {
            failures.push(format!(
                "{}: exit code {bad} is not among {:?}",
                scenario.name, scenario.allowed
            ));
        }
    }
    println!("{table}");
    if let Ok(path) = std::env::var("FAULT_MATRIX_OUT") {
        std::fs::write(&path, &table).expect("write the table");
    }
    assert!(failures.is_empty(), "{failures:#?}\n{table}");
}
