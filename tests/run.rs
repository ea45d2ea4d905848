//! `run`, the sidecar: endpoints, readiness, rechecks, budget, state file, re-verification, signals.

use std::time::{Duration, Instant};

use harness::{Emulator, Env, Sidecar, run, with};
use reqwest::Method;

const BASTION: &str = "127.0.0.2";

fn sidecar_env(emu: &Emulator, extra: &[(&str, &str)]) -> Env {
    let base = with(
        emu.env(),
        &[
            ("SENDSMS_BOOTSTRAP_BIND", BASTION),
            ("SENDSMS_POLL_INTERVAL", "1s"),
            ("SENDSMS_LOG_FORMAT", "json"),
        ],
    );
    with(base, extra)
}

#[tokio::test]
async fn endpoints_report_readiness_status_and_metrics() {
    let emu = Emulator::bastioned(&[]).await;
    let sidecar = Sidecar::start(&sidecar_env(&emu, &[])).await;
    sidecar.wait_readyz(200, Duration::from_secs(10)).await;

    assert_eq!(sidecar.get("/healthz").await.0, 200);
    let (_, reason) = sidecar.get("/readyz").await;
    assert!(reason.starts_with("ready: ipv4 127.0.0.1"), "{reason}");

    let (code, body) = sidecar.get("/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("status json");
    assert_eq!(status["ready"], true);
    assert_eq!(status["families"]["ipv4"]["verified_ip"], "127.0.0.1");
    assert_eq!(status["families"]["ipv4"]["phase"], "verified");
    assert_eq!(
        status["whitelist"],
        serde_json::json!([BASTION, "127.0.0.1"])
    );
    assert!(status["families"]["ipv4"]["verified_at"].is_string());
    assert_eq!(status["counters"]["api_calls"], 3);

    let (code, metrics) = sidecar.get("/metrics").await;
    assert_eq!(code, 200);
    for line in [
        "sendsms_whitelister_ready 1",
        "sendsms_whitelister_api_calls_total{action=\"token_add_ip\",outcome=\"success\"} 1",
        "sendsms_whitelister_api_calls_total{action=\"token_list_ips\",outcome=\"auth_refused\"} 1",
        "sendsms_whitelister_whitelist_size 2",
        "sendsms_whitelister_detection_duration_seconds_count",
        "sendsms_whitelister_verification_duration_seconds_count 1",
        "sendsms_whitelister_last_success_timestamp_seconds{family=\"ipv4\"}",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    let env = with(
        emu.env(),
        &[(
            "SENDSMS_HEALTH_URL",
            &format!("http://{}/readyz", sidecar.status),
        )],
    );
    let health = run(&["health"], &env).await;
    assert_eq!(health.code, 0, "{health:?}");

    let (code, answer) = sidecar.request(Method::POST, "/recheck").await;
    assert_eq!(code, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).expect("recheck json");
    assert_eq!(
        (
            answer["rechecked"].clone(),
            answer["status"]["ready"].clone()
        ),
        (true.into(), true.into())
    );

    let status_addr = sidecar.status;
    let stopped = sidecar.terminate().await;
    assert_eq!(stopped.code, 0);
    assert!(stopped.took < Duration::from_secs(5), "{stopped:?}");
    let env = with(
        emu.env(),
        &[(
            "SENDSMS_HEALTH_URL",
            &format!("http://{status_addr}/readyz"),
        )],
    );
    assert_ne!(
        run(&["health"], &env).await.code,
        0,
        "health fails once the sidecar is gone"
    );
}

#[tokio::test]
async fn idle_polls_make_no_api_call() {
    let emu = Emulator::bastioned(&[]).await;
    let sidecar = Sidecar::start(&sidecar_env(&emu, &[("SENDSMS_POLL_INTERVAL", "1s")])).await;
    sidecar.wait_readyz(200, Duration::from_secs(10)).await;
    let before = emu.api_requests().await;
    // Five more polls, each a detection of the unchanged address, however long they take.
    let detections = sidecar.counter("detections").await;
    sidecar
        .wait_counter("detections", detections + 5, Duration::from_secs(30))
        .await;
    assert_eq!(
        emu.api_requests().await,
        before,
        "idle polls called the API"
    );
    let stopped = sidecar.terminate().await;
    assert!(
        !stopped.stderr.contains("egress IP changed")
            && !stopped.stdout.contains("egress IP changed"),
        "{stopped:?}"
    );
}

#[tokio::test]
async fn concurrent_rechecks_are_coalesced_into_one_call() {
    let emu = Emulator::bastioned(&["--latency", "200"]).await;
    let sidecar = Sidecar::start(&sidecar_env(&emu, &[("SENDSMS_POLL_INTERVAL", "1h")])).await;
    sidecar.wait_readyz(200, Duration::from_secs(10)).await;
    let before = emu.api_requests().await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let client = sidecar.client();
        tasks.spawn(async move { client.request(Method::POST, "/recheck").await });
    }
    let answers = tasks.join_all().await;
    assert!(answers.iter().all(|(code, _)| *code == 200), "{answers:?}");
    let rechecked = answers
        .iter()
        .filter(|(_, body)| body.contains("\"rechecked\":true"))
        .count();
    assert!(rechecked >= 1, "{answers:?}");
    assert_eq!(
        emu.api_requests().await - before,
        1,
        "ten rechecks, one API call"
    );
}

#[tokio::test]
async fn a_burst_of_rechecks_never_exceeds_the_api_budget() {
    let emu = Emulator::bastioned(&[]).await;
    let env = sidecar_env(
        &emu,
        &[
            ("SENDSMS_API_BUDGET", "4"),
            ("SENDSMS_RECHECK_MIN_INTERVAL", "1s"),
        ],
    );
    let sidecar = Sidecar::start(&env).await;
    sidecar.wait_readyz(200, Duration::from_secs(10)).await;
    assert_eq!(
        emu.api_requests().await,
        3,
        "the first whitelisting takes three calls"
    );
    // Each forced recheck re-proves the address with one read. The first takes the budget's
    // fourth and last call of the minute; the second must wait for the window to slide. Ask
    // until the second round has begun, however slowly the first went.
    let client = sidecar.client();
    let patience = Duration::from_millis(300);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sidecar.counter("rechecks").await < 2 {
        assert!(Instant::now() < deadline, "no second recheck round began");
        let _ = client
            .request_within(Method::POST, "/recheck", patience)
            .await;
    }
    // The loop now waits on the budget: every further recheck queues behind it unanswered,
    // where a loop free to call would answer each at once with a round of its own.
    for asked in 0..8 {
        let answer = client
            .request_within(Method::POST, "/recheck", patience)
            .await;
        assert!(answer.is_err(), "recheck {asked} was answered: {answer:?}");
    }
    assert_eq!(emu.api_requests().await, 4, "the budget of 4 a minute held");
    assert_eq!(sidecar.counter("rechecks").await, 2, "one round waits");
    assert!(
        sidecar.ready().await,
        "waiting on the budget keeps the verified state"
    );
}

#[tokio::test]
async fn sigterm_during_a_verification_exits_0_within_5_seconds() {
    let emu = Emulator::bastioned(&["--propagation-delay", "600000"]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let env = sidecar_env(
        &emu,
        &[("SENDSMS_STATE_FILE", state.to_str().expect("utf-8"))],
    );
    let sidecar = Sidecar::start(&env).await;
    // Verifying, not merely started: the add went through and at least one proof read was
    // refused (the first read, before the add, is the other refusal).
    let deadline = Instant::now() + Duration::from_secs(30);
    while emu.requests(0, "token_add_ip").await != (1, 0)
        || emu.requests(0, "token_list_ips").await.1 < 2
    {
        assert!(Instant::now() < deadline, "never reached the proof reads");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let reason = sidecar.wait_readyz(503, Duration::from_secs(5)).await;
    assert_eq!(reason, "ipv4: 127.0.0.1 not verified yet");
    let stopped = sidecar.terminate().await;
    assert_eq!(stopped.code, 0, "{stopped:?}");
    assert!(stopped.took < Duration::from_secs(5), "{stopped:?}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(
        leftovers.is_empty(),
        "nothing verified, so nothing written, not even a temporary file"
    );
}

#[tokio::test]
async fn a_restart_with_an_unchanged_ip_spends_no_api_call_and_a_corrupt_state_file_is_ignored() {
    let emu = Emulator::bastioned(&[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    std::fs::write(&state, b"{\"format\": 42, garbage").expect("corrupt state");
    let env = sidecar_env(
        &emu,
        &[("SENDSMS_STATE_FILE", state.to_str().expect("utf-8"))],
    );

    let first = Sidecar::start(&env).await;
    first.wait_readyz(200, Duration::from_secs(10)).await;
    let stopped = first.terminate().await;
    assert_eq!(stopped.code, 0);
    assert!(
        stopped.stdout.contains("corrupt") || stopped.stderr.contains("corrupt"),
        "a warning names the corrupt file: {stopped:?}"
    );
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("state written")).expect("valid json");
    assert_eq!(written["verified"][0]["ip"], "127.0.0.1");
    let calls = emu.api_requests().await;

    let second = Sidecar::start(&env).await;
    second.wait_readyz(200, Duration::from_secs(10)).await;
    // Three more polls, each finding the restored address unchanged.
    let detections = second.counter("detections").await;
    second
        .wait_counter("detections", detections + 3, Duration::from_secs(30))
        .await;
    assert_eq!(
        emu.api_requests().await,
        calls,
        "the restart called the API"
    );
    second
        .wait_for_log("restored from the state file", Duration::from_secs(10))
        .await;
}

#[tokio::test]
async fn reverification_re_adds_an_ip_removed_in_the_web_ui() {
    let emu = Emulator::bastioned(&[]).await;
    let env = sidecar_env(&emu, &[("SENDSMS_REVERIFY_INTERVAL", "1s")]);
    let sidecar = Sidecar::start(&env).await;
    sidecar.wait_readyz(200, Duration::from_secs(10)).await;
    assert_eq!(emu.remove_ip(0, "127.0.0.1").await, 1);
    assert_eq!(emu.whitelist(0).await, vec![BASTION]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while emu.whitelist(0).await != vec![BASTION, "127.0.0.1"] {
        assert!(
            Instant::now() < deadline,
            "not re-added:\n{}",
            sidecar.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(emu.requests(0, "token_add_ip").await, (2, 0));
    sidecar.wait_readyz(200, Duration::from_secs(5)).await;
}

#[tokio::test]
async fn run_is_the_default_command_and_a_bad_config_exits_2() {
    let emu = Emulator::start(&["--rate-limit", "0"]).await;
    let env = with(emu.env(), &[("SENDSMS_POLL_INTERVAL", "often")]);
    let result = run(&[], &env).await;
    assert_eq!(result.code, 2, "{result:?}");
    assert!(
        result.stderr.contains("SENDSMS_POLL_INTERVAL"),
        "{result:?}"
    );
}
