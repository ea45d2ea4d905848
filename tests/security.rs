//! Defences from SECURITY.md that need a network to show: no redirects, CONNECT-only proxies,
//! environment proxies ignored, and no secret on any status endpoint.

use std::time::Duration;

use harness::{Emulator, KEY, raw_server, run, secret, with};

const BASTION: &str = "127.0.0.2";

#[tokio::test]
async fn api_redirects_are_never_followed() {
    let emu = Emulator::start(&[
        "--allow",
        BASTION,
        "--allow",
        "127.0.0.1",
        "--rate-limit",
        "0",
    ])
    .await;
    let redirect = format!(
        "HTTP/1.1 302 Found\r\nlocation: {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        emu.url("/json")
    );
    let (api, seen) = raw_server("127.0.0.1:0", redirect.into_bytes(), Duration::ZERO).await;
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_API_URL", &format!("http://{api}/json")),
            ("SENDSMS_BOOTSTRAP_BIND", BASTION),
        ],
    );
    let once = run(&["once"], &env).await;
    assert_ne!(once.code, 0, "{once:?}");
    assert!(once.stderr.contains("HTTP 302"), "{once:?}");
    assert!(
        !seen.lock().expect("lock").is_empty(),
        "the redirecting API was asked"
    );
    assert_eq!(
        emu.state().await["keys"][0]["requests"],
        serde_json::json!({}),
        "the redirect was followed"
    );
}

#[tokio::test]
async fn an_https_api_through_the_bootstrap_proxy_is_a_connect_tunnel() {
    let emu = Emulator::start(&["--allow", "127.0.0.5", "--rate-limit", "0"]).await;
    let (proxy, seen) = raw_server(
        "127.0.0.1:0",
        b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n".to_vec(),
        Duration::ZERO,
    )
    .await;
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_API_URL", "https://127.0.0.1:9/json"),
            (
                "SENDSMS_BOOTSTRAP_PROXY",
                &format!("http://user:{}@{proxy}", secret("proxy-secret")),
            ),
            ("SENDSMS_VERIFY_TIMEOUT", "2s"),
        ],
    );
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 5, "{once:?}");
    let seen = String::from_utf8_lossy(&seen.lock().expect("lock")).into_owned();
    assert!(
        seen.starts_with("CONNECT 127.0.0.1:9 HTTP/1.1\r\n"),
        "{seen}"
    );
    assert!(
        !seen.contains(KEY) && !seen.contains("password="),
        "the proxy saw the request: {seen}"
    );
    // `run` failed the test already if the proxy password (a registered secret) was shown.
    assert!(
        !once.stderr.contains("proxy-secret") && !once.stdout.contains("proxy-secret"),
        "{once:?}"
    );
}

#[tokio::test]
async fn proxies_from_the_environment_are_ignored() {
    let emu = Emulator::bastioned(&[]).await;
    let (trap, seen) = raw_server(
        "127.0.0.1:0",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n127.0.0.9\n".to_vec(),
        Duration::ZERO,
    )
    .await;
    let trap = format!("http://{trap}");
    let mut env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", BASTION)]);
    for name in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        env.push((name.to_owned(), trap.clone()));
    }
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 0, "{once:?}");
    assert!(
        seen.lock().expect("lock").is_empty(),
        "a client used a proxy from the environment"
    );
    assert_eq!(emu.whitelist(0).await, vec![BASTION, "127.0.0.1"]);
}

#[tokio::test]
async fn a_plain_http_api_on_another_host_needs_the_loud_override() {
    let emu = Emulator::start(&["--rate-limit", "0"]).await;
    // Detection fails on a closed loopback port, so nothing is ever sent to that host.
    let closed = format!("http://127.0.0.1:{}/ip", harness::free_port());
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_API_URL", "http://api.example.invalid/json"),
            ("SENDSMS_IP_PROVIDERS", &closed),
            // One provider can settle only a quorum of one (a higher one is a configuration error).
            ("SENDSMS_IP_QUORUM", "1"),
        ],
    );
    let refused = run(&["check"], &env).await;
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("clear text"), "{refused:?}");
    let env = with(env, &[("SENDSMS_ALLOW_INSECURE_API_URL", "true")]);
    let allowed = run(&["check"], &env).await;
    assert_eq!(allowed.code, 3, "{allowed:?}");
    assert!(
        allowed.stderr.contains("in clear text"),
        "the override is logged loudly: {allowed:?}"
    );
}
