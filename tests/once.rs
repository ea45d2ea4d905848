//! `once` and `check` end to end: the real binary against the emulator on loopback.

use std::time::Duration;

use harness::{Emulator, KEY, USERNAME, Watched, require_tool, run, with, without};

const BASTION: &str = "127.0.0.2";

#[tokio::test]
async fn new_ip_is_whitelisted_through_bootstrap_bind_and_check_then_passes() {
    let emu = Emulator::bastioned(&[]).await;
    let env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", BASTION)]);

    let before = run(&["check"], &env).await;
    assert_eq!(before.code, 1, "{before:?}");
    assert!(before.stdout.contains("listed: no"), "{before:?}");

    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 0, "{once:?}");
    assert!(
        once.stdout.contains("127.0.0.1 whitelisted and verified"),
        "{once:?}"
    );
    assert_eq!(emu.whitelist(0).await, vec![BASTION, "127.0.0.1"]);
    let (added, refused) = emu.requests(0, "token_add_ip").await;
    assert_eq!((added, refused), (1, 0));

    let after = run(&["check"], &env).await;
    assert_eq!(after.code, 0, "{after:?}");
    assert!(after.stdout.contains("listed: yes"), "{after:?}");
    assert!(after.stdout.contains("egress IP: 127.0.0.1"), "{after:?}");
}

#[tokio::test]
async fn an_already_listed_ip_causes_no_write() {
    let emu = Emulator::start(&["--allow", "127.0.0.1", "--rate-limit", "0"]).await;
    let once = run(&["once"], &emu.env()).await;
    assert_eq!(once.code, 0, "{once:?}");
    assert!(once.stdout.contains("already whitelisted"), "{once:?}");
    assert_eq!(emu.requests(0, "token_add_ip").await, (0, 0));
    assert_eq!(emu.requests(0, "token_list_ips").await, (1, 0));
}

#[tokio::test]
async fn an_unauthorized_bootstrap_bind_exits_4_and_adds_nothing() {
    let emu = Emulator::bastioned(&[]).await;
    let env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", "127.0.0.3")]);
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 4, "{once:?}");
    assert!(
        once.stderr.contains("bootstrap bind address 127.0.0.3"),
        "{once:?}"
    );
    assert_eq!(emu.whitelist(0).await, vec![BASTION]);
    assert_eq!(emu.requests(0, "token_add_ip").await, (0, 1));
}

#[tokio::test]
async fn without_a_bootstrap_path_a_refusal_says_how_to_configure_one() {
    let emu = Emulator::bastioned(&[]).await;
    let once = run(&["once"], &emu.env()).await;
    assert_eq!(once.code, 4, "{once:?}");
    assert!(once.stderr.contains("SENDSMS_BOOTSTRAP_PROXY"), "{once:?}");
    assert_eq!(emu.whitelist(0).await, vec![BASTION]);
}

#[tokio::test]
async fn a_two_second_propagation_delay_still_verifies() {
    let emu = Emulator::bastioned(&["--propagation-delay", "2000"]).await;
    let env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", BASTION)]);
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 0, "{once:?}");
    assert!(
        once.elapsed >= Duration::from_secs(2),
        "verified before the IP took effect: {once:?}"
    );
    let (_, refused) = emu.requests(0, "token_list_ips").await;
    assert!(
        refused >= 2,
        "verification must have retried through the delay, refused={refused}"
    );
}

#[tokio::test]
async fn verification_that_never_succeeds_exits_5() {
    let emu = Emulator::bastioned(&["--propagation-delay", "60000"]).await;
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_BOOTSTRAP_BIND", BASTION),
            ("SENDSMS_VERIFY_TIMEOUT", "2s"),
        ],
    );
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 5, "{once:?}");
    assert!(
        once.stderr.contains("127.0.0.1 was not proven usable"),
        "{once:?}"
    );
    assert!(once.elapsed < Duration::from_secs(8), "{once:?}");
}

/// The IP is already on the list but not yet in effect, so the direct read fails and the
/// add meets the duplicate answer, which must count as success.
async fn duplicate_answer_is_success(status: &str) {
    let emu =
        Emulator::bastioned(&["--propagation-delay", "1000", "--duplicate-status", status]).await;
    let pre = emu
        .call_from(
            BASTION.parse().expect("ip"),
            &[
                ("action", "token_add_ip"),
                ("username", USERNAME),
                ("password", KEY),
                ("ipaddr", "127.0.0.1"),
            ],
        )
        .await;
    assert_eq!(pre["status"], 0, "{pre}");
    let env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", BASTION)]);
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 0, "{once:?}");
    assert_eq!(emu.requests(0, "token_add_ip").await, (2, 0));
    assert_eq!(emu.whitelist(0).await, vec![BASTION, "127.0.0.1"]);
}

#[tokio::test]
async fn duplicate_status_minus_512_is_success() {
    duplicate_answer_is_success("-512").await;
}

#[tokio::test]
async fn duplicate_status_zero_is_success() {
    duplicate_answer_is_success("0").await;
}

async fn rate_limit_is_ridden_out(status: &str) {
    // Two calls per 3 s window: the flow's third call is refused and must wait it out.
    let emu = Emulator::start(&[
        "--allow",
        BASTION,
        "--rate-limit",
        "2",
        "--rate-window",
        "3000",
        "--rate-limit-status",
        status,
    ])
    .await;
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_BOOTSTRAP_BIND", BASTION),
            ("SENDSMS_VERIFY_TIMEOUT", "30s"),
        ],
    );
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 0, "{once:?}");
    let state = emu.state().await;
    assert!(
        state["rate_limited_requests"].as_u64().unwrap_or(0) >= 1,
        "{state}"
    );
    assert_eq!(emu.whitelist(0).await, vec![BASTION, "127.0.0.1"]);
}

#[tokio::test]
async fn rate_limit_4096_is_ridden_out() {
    rate_limit_is_ridden_out("-4096").await;
}

#[tokio::test]
async fn rate_limit_8192_is_ridden_out() {
    rate_limit_is_ridden_out("-8192").await;
}

/// The flow needs three answers (the first read, the add, the proof), each retried under
/// exponential backoff (0.5 s doubling to 10 s, jittered up to twice that) until the deadline.
/// Within 600 s, even if every attempt took the full 3 s request timeout, it fails only after
/// at least 29 faults before the third answer: P = 1.6e-13 per round at a 30 % fault rate,
/// 8.0e-13 for the five rounds (negative binomial tail). The old 20 s deadline failed about
/// 1.8 % of the test runs (simulated).
const RIDE_OUT_FAULTS: &str = "600s";

#[tokio::test]
async fn a_thirty_percent_fault_rate_is_ridden_out() {
    for round in 0..5 {
        let emu = Emulator::bastioned(&["--fail-rate", "0.3"]).await;
        let env = with(
            emu.env(),
            &[
                ("SENDSMS_BOOTSTRAP_BIND", BASTION),
                ("SENDSMS_VERIFY_TIMEOUT", RIDE_OUT_FAULTS),
            ],
        );
        let once = run(&["once"], &env).await;
        assert_eq!(once.code, 0, "round {round}: {once:?}");
        assert_eq!(
            emu.whitelist(0).await,
            vec![BASTION, "127.0.0.1"],
            "round {round}"
        );
    }
}

#[tokio::test]
async fn the_bootstrap_path_through_a_real_tinyproxy() {
    let Some(tinyproxy) = require_tool("tinyproxy") else {
        return;
    };
    let emu = Emulator::bastioned(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let port = harness::free_port();
    let conf = dir.path().join("tinyproxy.conf");
    // Bind makes the proxy's outgoing connections leave from the bastion address.
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nBind {BASTION}\nTimeout 10\nAllow 127.0.0.1\nMaxClients 10\n\
             LogLevel Error\nUser nobody\nGroup nogroup\nDisableViaHeader Yes\n"
        ),
    )
    .expect("write tinyproxy.conf");
    let mut command = tokio::process::Command::new(tinyproxy);
    command.arg("-d").arg("-c").arg(&conf);
    let _proxy = Watched::spawn("tinyproxy", command);
    harness::wait_for_port(([127, 0, 0, 1], port).into()).await;

    let proxy = format!("http://127.0.0.1:{port}");
    let env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_PROXY", proxy.as_str())]);
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 0, "{once:?}");
    assert!(once.stdout.contains("127.0.0.1 whitelisted"), "{once:?}");
    assert_eq!(emu.whitelist(0).await, vec![BASTION, "127.0.0.1"]);
    assert_eq!(
        emu.requests(0, "token_add_ip").await,
        (1, 0),
        "the add came through the bastion"
    );
}

#[tokio::test]
async fn the_key_can_come_from_a_file() {
    let emu = Emulator::start(&["--allow", "127.0.0.1", "--rate-limit", "0"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("api-key");
    std::fs::write(&file, format!("{KEY}\n")).expect("write key file");
    let env = with(
        without(emu.env(), "SENDSMS_API_KEY"),
        &[("SENDSMS_API_KEY_FILE", file.to_str().expect("utf-8"))],
    );
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 0, "{once:?}");
}

#[tokio::test]
async fn configuration_errors_exit_2_and_name_the_variable() {
    let emu = Emulator::start(&["--rate-limit", "0"]).await;
    let cases = [
        (without(emu.env(), "SENDSMS_USERNAME"), "SENDSMS_USERNAME"),
        (
            with(emu.env(), &[("SENDSMS_VERIFY_TIMEOUT", "soon")]),
            "SENDSMS_VERIFY_TIMEOUT",
        ),
        (
            with(
                without(emu.env(), "SENDSMS_API_KEY"),
                &[("SENDSMS_API_KEY_FILE", "/nonexistent/api-key")],
            ),
            "SENDSMS_API_KEY_FILE",
        ),
        (
            with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", "bastion")]),
            "SENDSMS_BOOTSTRAP_BIND",
        ),
        (
            with(
                emu.env(),
                &[("SENDSMS_API_URL", "http://api.sendsms.ro/json")],
            ),
            "SENDSMS_API_URL",
        ),
    ];
    for (env, variable) in cases {
        for command in ["once", "check"] {
            let result = run(&[command], &env).await;
            assert_eq!(result.code, 2, "{command} with bad {variable}: {result:?}");
            assert!(result.stderr.contains(variable), "{command}: {result:?}");
        }
    }
    let state = emu.state().await;
    assert_eq!(
        state["keys"][0]["requests"],
        serde_json::json!({}),
        "no API call on bad config"
    );
}

#[tokio::test]
async fn undetectable_egress_ip_exits_3_without_writing() {
    let emu = Emulator::start(&["--rate-limit", "0"]).await;
    let closed = format!("http://127.0.0.1:{}/ip", harness::free_port());
    // One provider can settle only a quorum of one (a higher one is a configuration error).
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_IP_PROVIDERS", closed.as_str()),
            ("SENDSMS_IP_QUORUM", "1"),
        ],
    );
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 3, "{once:?}");
    assert!(
        once.stderr
            .contains("egress address could not be determined"),
        "{once:?}"
    );
    // The first read overlaps detection (one round trip less on success), so it may be spent;
    // nothing is ever written for an address nobody could determine.
    let state = emu.state().await;
    let requests = &state["keys"][0]["requests"];
    assert!(requests.get("token_add_ip").is_none(), "{requests}");
    assert!(
        emu.api_requests().await <= 1,
        "at most the overlapped read: {requests}"
    );
}

#[tokio::test]
async fn loopback_is_refused_unless_non_public_addresses_are_allowed() {
    let emu = Emulator::start(&["--allow", "127.0.0.1", "--rate-limit", "0"]).await;
    let env = without(emu.env(), "SENDSMS_ALLOW_NON_PUBLIC_IPS");
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 3, "{once:?}");
    assert!(once.stderr.contains("loopback"), "{once:?}");
}

#[tokio::test]
async fn a_throttled_first_read_is_read_again_not_answered_with_a_write() {
    // Every call is throttled for the first two seconds; the address is already listed.
    let emu = Emulator::start(&[
        "--allow",
        "127.0.0.1",
        "--allow",
        "127.0.0.2",
        "--rate-limit",
        "0",
        "--rate-limited-for",
        "2000",
    ])
    .await;
    let env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", "127.0.0.2")]);
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 0, "{once:?}");
    assert!(once.stdout.contains("already whitelisted"), "{once:?}");
    assert_eq!(
        emu.requests(0, "token_add_ip").await,
        (0, 0),
        "nothing written for a listed address"
    );
}
