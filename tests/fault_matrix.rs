//! The fault matrix: `once` against misbehaving APIs and providers, 20 runs per scenario, two
//! invariants checked on every run, and a table of outcomes and times.
//! `bench/fault-matrix.sh` regenerates docs/fault-matrix.md from this and the run-mode matrix.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use harness::{Emulator, fixed_http, run};

const RUNS: usize = 20;
/// Runs at a time. Most of a run is waiting (on backoff, a minute of rate limiting, a hanging
/// API), but every start is a burst of two processes: 48 at a time on two cores, with a 2 s
/// request timeout and no retry of detection in `once`, made a detection time out now and
/// then. Fewer at a time, and the default 10 s timeout (see `one_run`).
const AT_A_TIME: usize = 32;
const BASTION: &str = "127.0.0.2";
const EGRESS: &str = "127.0.0.1";
const LIAR_SAYS: &str = "127.0.0.9";

/// What a scenario changes: the emulator's flags, the environment, the exit code expected.
struct Scenario {
    name: &'static str,
    /// Emulator flags for run `index`, beside the bastion and no rate limit.
    emulator: fn(usize) -> Vec<&'static str>,
    env: fn(&Ctx) -> Vec<(&'static str, String)>,
    expect: Expect,
    /// A run mostly waits (for the deadline, or a minute of rate limiting): these start
    /// first, so that none starts last and sets the matrix's wall time.
    waits: bool,
}

/// The exit code a run must end with.
enum Expect {
    /// This code, every run.
    Code(i32),
    /// The code the emulator's count of answers calls for: the scenario answers a random
    /// share of calls with an unknown status code, a permanent error that the flow does not
    /// retry. The run must end with 4 when it answered the add (no add was counted), with 5
    /// when it answered the proof (an add but no accepted read counted), else with 0.
    ByAnswers,
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

fn none(_: usize) -> Vec<&'static str> {
    Vec::new()
}
fn no_env(_: &Ctx) -> Vec<(&'static str, String)> {
    Vec::new()
}

/// A flow needs three answers (the first read, the add, the proof), each retried under
/// backoff (0.5 s doubling to 10 s, jittered up to twice that). Within 600 s, even if every
/// attempt took the whole 10 s request timeout, a run fails only after at least 22 faults
/// before its third answer: P = 4.4e-10 per run at 30 % faults, 3.5e-8 for the 80 runs of
/// the four random-fault rows (negative binomial tail). The former 60 s failed about one
/// matrix in a hundred (simulated: 1.2e-4 per run).
fn random_faults_env(_: &Ctx) -> Vec<(&'static str, String)> {
    vec![("SENDSMS_VERIFY_TIMEOUT", "600s".into())]
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "no fault",
        emulator: none,
        env: no_env,
        expect: Expect::Code(0),
        waits: false,
    },
    Scenario {
        name: "500 ms latency on every API answer",
        emulator: |_| vec!["--latency", "500"],
        env: no_env,
        expect: Expect::Code(0),
        waits: false,
    },
    Scenario {
        name: "30% HTTP 502",
        emulator: |_| vec!["--fail-rate", "0.3", "--fault", "http502"],
        env: random_faults_env,
        expect: Expect::Code(0),
        waits: false,
    },
    Scenario {
        name: "30% dropped connections",
        emulator: |_| vec!["--fail-rate", "0.3", "--fault", "drop"],
        env: random_faults_env,
        expect: Expect::Code(0),
        waits: false,
    },
    Scenario {
        name: "hanging API (no answer at all)",
        emulator: |_| vec!["--fail-rate", "1", "--fault", "hang"],
        env: no_env,
        expect: Expect::Code(5),
        waits: true,
    },
    Scenario {
        name: "30% malformed JSON",
        emulator: |_| vec!["--fail-rate", "0.3", "--fault", "malformed-json"],
        env: random_faults_env,
        expect: Expect::Code(0),
        waits: false,
    },
    Scenario {
        name: "30% 10 MiB bodies",
        emulator: |_| vec!["--fail-rate", "0.3", "--fault", "huge-body"],
        env: random_faults_env,
        expect: Expect::Code(0),
        waits: false,
    },
    Scenario {
        name: "details in every shape (strings, objects, map, csv)",
        emulator: |run| {
            vec![
                "--list-format",
                ["strings", "objects", "map", "csv"][run % 4],
            ]
        },
        env: no_env,
        expect: Expect::Code(0),
        waits: false,
    },
    Scenario {
        name: "30% unknown status code (-1024)",
        emulator: |_| vec!["--fail-rate", "0.3", "--fault", "unknown-status"],
        env: no_env,
        expect: Expect::ByAnswers,
        waits: false,
    },
    Scenario {
        // The first read's unknown answer says nothing about the whitelist, so the add is
        // sent; its unknown answer is a permanent refusal of the bootstrap path: exit 4.
        name: "unknown status code (-1024) on every answer",
        emulator: |_| vec!["--fail-rate", "1", "--fault", "unknown-status"],
        env: no_env,
        expect: Expect::Code(4),
        waits: false,
    },
    Scenario {
        name: "rate-limit answers for a whole minute",
        emulator: |_| vec!["--rate-limited-for", "60000"],
        env: |_| vec![("SENDSMS_VERIFY_TIMEOUT", "100s".into())],
        expect: Expect::Code(0),
        waits: true,
    },
    Scenario {
        name: "10 s propagation delay",
        emulator: |_| vec!["--propagation-delay", "10000"],
        // Backoff with jitter may read 7 times before the address takes effect: with the add
        // and the first read, a ninth call, which the budget (8 a minute) fits only a minute
        // after the first. A budget wait never runs past the verify timeout, so it must hold it.
        env: |_| vec![("SENDSMS_VERIFY_TIMEOUT", "90s".into())],
        expect: Expect::Code(0),
        waits: true,
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
        expect: Expect::Code(0),
        waits: false,
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
        expect: Expect::Code(0),
        waits: false,
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
        // A proxy that refuses connections is reported after three quick tries: exit 4,
        // without waiting out the verify timeout.
        expect: Expect::Code(4),
        waits: false,
    },
];

/// One run's result and whether both invariants held.
struct Outcome {
    code: i32,
    expected: i32,
    seconds: f64,
    verified_only_if_working: bool,
}

async fn one_run(scenario: &Scenario, index: usize) -> Outcome {
    let emu = Emulator::bastioned(&(scenario.emulator)(index)).await;
    let liar = fixed_http(
        "127.0.0.1:0",
        format!("{LIAR_SAYS}\n").into_bytes(),
        Duration::ZERO,
    )
    .await;
    let local: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let refused = tokio::net::TcpSocket::new_v4().expect("socket");
    refused.bind(local).expect("bind");
    let silent = tokio::net::UdpSocket::bind(local).await.expect("udp");
    let ctx = Ctx {
        http: emu.addr,
        dns: emu.dns,
        liar,
        refused_tcp: refused.local_addr().expect("addr"),
        silent_udp: silent.local_addr().expect("addr"),
    };
    // The request timeout stays at its default (10 s): detection has no retry in `once`, and
    // a shorter one turned a busy machine's slow answer into an exit 3.
    let mut env = harness::without(emu.env(), "SENDSMS_REQUEST_TIMEOUT");
    for (name, value) in [
        ("SENDSMS_BOOTSTRAP_BIND", BASTION.to_owned()),
        ("SENDSMS_VERIFY_TIMEOUT", "15s".to_owned()),
        ("SENDSMS_LOG_FORMAT", "json".to_owned()),
    ]
    .into_iter()
    .chain((scenario.env)(&ctx))
    {
        env = harness::without(env, name);
        if !value.is_empty() {
            env.push((name.to_owned(), value));
        }
    }
    // `run` fails the test if a secret shows up in any output: the second invariant (and the
    // emulator's output is checked when it is dropped).
    let result = run(&["once"], &env).await;
    let state = emu.state().await;
    let whitelist: Vec<String> = state["keys"][0]["whitelist"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let expected = match scenario.expect {
        Expect::Code(code) => code,
        Expect::ByAnswers => {
            let accepted = |action: &str| {
                state["keys"][0]["requests"][action]["accepted"]
                    .as_u64()
                    .unwrap_or(0)
            };
            match (accepted("token_add_ip"), accepted("token_list_ips")) {
                (0, _) => 4,
                (_, 0) => 5,
                _ => 0,
            }
        }
    };
    // A default key works from exactly the addresses on its effective whitelist, so: exit 0
    // must mean the egress address is on it, and nothing but the bastion and the egress ever is.
    let works_from_egress = whitelist.iter().any(|ip| ip == EGRESS);
    let only_true_addresses = whitelist.iter().all(|ip| ip == BASTION || ip == EGRESS);
    Outcome {
        code: result.code,
        expected,
        seconds: result.elapsed.as_secs_f64(),
        verified_only_if_working: only_true_addresses && (result.code != 0 || works_from_egress),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix() {
    let slots = Arc::new(tokio::sync::Semaphore::new(AT_A_TIME));
    let mut tasks = tokio::task::JoinSet::new();
    let mut order: Vec<usize> = (0..SCENARIOS.len()).collect();
    order.sort_by_key(|&number| !SCENARIOS[number].waits);
    for number in order {
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
        for outcome in outcomes.iter().filter(|o| o.code != o.expected) {
            failures.push(format!(
                "{}: exit code {}, expected {}",
                scenario.name, outcome.code, outcome.expected
            ));
        }
    }
    println!("{table}");
    if let Ok(path) = std::env::var("FAULT_MATRIX_OUT") {
        std::fs::write(&path, &table).expect("write the table");
    }
    assert!(failures.is_empty(), "{failures:#?}\n{table}");
}
