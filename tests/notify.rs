//! Watching it: notifications and heartbeats from the real binary, and what `/metrics` exports.

use std::time::Duration;

use harness::{Emulator, Sidecar, raw_server, run, secret, with};

/// A webhook token that must never be shown.
const TOKEN: &str = "w3bh00k-t0k3n-5ecret";

/// Checks `text` by name; registered as a secret, the token is also looked for in every
/// output of every process and every status body the harness sees.
fn assert_no_token(text: &str) {
    secret(TOKEN);
    assert!(!text.contains(TOKEN), "the webhook token leaked:\n{text}");
}

#[tokio::test]
async fn a_hanging_webhook_never_delays_readiness_and_its_token_is_never_shown() {
    secret(TOKEN);
    // Accepts connections and never answers.
    let (hang, _) = raw_server("127.0.0.1:0", Vec::new(), Duration::from_secs(3600)).await;
    let emu = Emulator::bastioned(&[]).await;
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_BOOTSTRAP_BIND", "127.0.0.2"),
            (
                "SENDSMS_NOTIFY_URLS",
                &format!("http://{hang}/hooks/{TOKEN},slack+http://{hang}/s/{TOKEN}"),
            ),
            (
                "SENDSMS_HEARTBEAT_URL",
                &format!("http://{hang}/ping/{TOKEN}"),
            ),
        ],
    );
    let sidecar = Sidecar::start(&env).await;
    // As fast as without notifications: the round does not wait for any webhook.
    sidecar.wait_readyz(200, Duration::from_secs(10)).await;
    let status = sidecar.status().await;
    let shown = status.to_string();
    assert_no_token(&shown);
    let targets = status["notifications"].as_array().expect("targets");
    assert_eq!(targets.len(), 2);
    assert_eq!(targets[0]["target"], format!("http://{hang}"));
    let (_, metrics) = sidecar.get("/metrics").await;
    assert_no_token(&metrics);
    let stopped = sidecar.terminate().await;
    assert_eq!(stopped.code, 0, "{stopped:?}");
}

#[tokio::test]
async fn metrics_export_build_info_and_no_coordination_without_a_store() {
    let emu = Emulator::bastioned(&[]).await;
    let env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", "127.0.0.2")]);
    let sidecar = Sidecar::start(&env).await;
    sidecar.wait_readyz(200, Duration::from_secs(10)).await;
    let (code, metrics) = sidecar.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!(
            "sendsms_whitelister_build_info{{version=\"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("sendsms_whitelister_verified_age_seconds{family=\"ipv4\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("coordination"),
        "no coordination metric without SENDSMS_COORDINATION:\n{metrics}"
    );
    let stopped = sidecar.terminate().await;
    assert_eq!(stopped.code, 0, "{stopped:?}");
}

#[tokio::test]
async fn notify_test_exits_0_only_when_every_target_accepts() {
    secret(TOKEN);
    let accepted = b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_vec();
    let refused =
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec();
    let (good, seen) = raw_server("127.0.0.1:0", accepted, Duration::ZERO).await;
    let (bad, _) = raw_server("127.0.0.1:0", refused, Duration::ZERO).await;
    let one = [(
        "SENDSMS_NOTIFY_URLS".to_owned(),
        format!("http://{good}/hooks/{TOKEN}"),
    )];
    let result = run(&["notify-test"], &one).await;
    assert_eq!(result.code, 0, "{result:?}");
    assert_no_token(&format!("{result:?}"));
    assert!(
        result.stdout.contains(&format!("http://{good}: accepted")),
        "{result:?}"
    );
    let sent =
        String::from_utf8_lossy(&seen.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
    assert!(sent.starts_with(&format!("POST /hooks/{TOKEN} ")), "{sent}");
    assert!(sent.contains("\"event\":\"test\""), "{sent}");

    let both = [(
        "SENDSMS_NOTIFY_URLS".to_owned(),
        format!("http://{good}/a/{TOKEN}, http://{bad}/b/{TOKEN}"),
    )];
    let result = run(&["notify-test"], &both).await;
    assert_eq!(result.code, 1, "{result:?}");
    assert!(
        result.stdout.contains("not accepted (HTTP 404)"),
        "{result:?}"
    );
    assert_no_token(&format!("{result:?}"));

    let none = run(&["notify-test"], &[]).await;
    assert_eq!(none.code, 1, "{none:?}");
    assert!(none.stderr.contains("SENDSMS_NOTIFY_URLS"), "{none:?}");

    let bad_url = [(
        "SENDSMS_NOTIFY_URLS".to_owned(),
        format!("ftp://{good}/{TOKEN}"),
    )];
    let result = run(&["notify-test"], &bad_url).await;
    assert_eq!(result.code, 2, "{result:?}");
    assert!(result.stderr.contains("SENDSMS_NOTIFY_URLS"), "{result:?}");
    assert_no_token(&format!("{result:?}"));
}
