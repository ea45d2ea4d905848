//! The gateway in the real binary, on loopback: who may call, what reaches the API, an unknown outcome, a NAT gateway's address change.

use std::net::SocketAddr;
use std::time::Duration;

use harness::gateway::{app_client, assert_each_logged_once, logged, send, send_stream};
use harness::{Emulator, KEY, Sidecar, USERNAME, free_port, with};

const TOKEN: &str = "gw-token-4f1c9a07d2e85b36a1c0f9e4";

/// A caller: its name, its query parameters, its Authorization header, the HTTP code it gets.
type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], Option<&'a str>, u16);

/// `run` with the gateway on a free loopback port, over an emulator whose bastion is 127.0.0.2.
async fn sidecar(emu: &Emulator, extra: &[(&str, &str)]) -> (Sidecar, SocketAddr) {
    let gateway: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listen = gateway.to_string();
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_BOOTSTRAP_BIND", "127.0.0.2"),
            ("SENDSMS_GATEWAY_LISTEN", &listen),
            ("SENDSMS_LOG_FORMAT", "json"),
            ("SENDSMS_API_BUDGET", "120"),
        ],
    );
    let sidecar = Sidecar::start(&with(env, extra)).await;
    sidecar.wait_readyz(200, Duration::from_secs(15)).await;
    (sidecar, gateway)
}

#[tokio::test]
async fn with_a_token_every_caller_presents_it_and_the_apps_credentials_never_reach_the_api() {
    let emu = Emulator::bastioned(&[]).await;
    let (sidecar, gateway) = sidecar(&emu, &[("SENDSMS_GATEWAY_TOKEN", TOKEN)]).await;
    let client = app_client();
    let bearer = format!("Bearer {TOKEN}");
    let cases: [Case; 5] = [
        ("no token", &[], None, 403),
        (
            "a wrong token",
            &[("password", "not-the-token-at-all-000")],
            None,
            403,
        ),
        (
            "the key itself",
            &[("username", USERNAME), ("password", KEY)],
            None,
            403,
        ),
        (
            "the token as password",
            &[("username", "app-user"), ("password", TOKEN)],
            None,
            200,
        ),
        (
            "a bearer token",
            &[("username", "app-user")],
            Some(&bearer),
            200,
        ),
    ];
    for (name, params, authorization, want) in cases {
        let sent = send(&client, gateway, name, params, authorization).await;
        assert_eq!(
            sent.code,
            want,
            "{name}: {}\n{}",
            sent.body,
            sidecar.output()
        );
        let status = sent.status().expect("a sendSMS-shaped answer");
        assert_eq!(
            status,
            if want == 200 { 1 } else { -8 },
            "{name}: {}",
            sent.body
        );
        assert!(!sent.body.contains(TOKEN), "{name}: the token came back");
    }
    let state = emu.state().await;
    let logged = logged(&state);
    assert_eq!(
        logged.keys().collect::<Vec<_>>(),
        ["a bearer token", "the token as password"]
    );
    for message in state["messages"].as_array().expect("messages") {
        assert_eq!(message["credentials"]["username"], "matched");
        assert_eq!(message["credentials"]["password"], "key 0");
        assert_eq!(message["peer"], "127.0.0.1", "over the direct route");
    }
    assert_eq!(
        state["unmatched_requests"], 0,
        "the app's own user name or password reached the API"
    );
    let (_, metrics) = sidecar.get("/metrics").await;
    for line in [
        "sendsms_whitelister_gateway_calls_total{action=\"message_send\",outcome=\"caller_refused\"} 3",
        "sendsms_whitelister_gateway_calls_total{action=\"message_send\",outcome=\"forwarded\"} 2",
        "sendsms_whitelister_gateway_held_calls 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }
    let status = sidecar.status().await;
    assert_eq!(status["gateway"]["listen"], gateway.to_string());
    assert_eq!(status["gateway"]["calls"]["caller_refused"], 3);
    let stopped = sidecar.terminate().await;
    assert_eq!(stopped.code, 0, "{stopped:?}");
    assert!(stopped.took < Duration::from_secs(5), "{stopped:?}");
}

#[tokio::test]
async fn an_unknown_outcome_is_a_502_and_the_message_is_sent_once() {
    let emu = Emulator::bastioned(&["--drop-after-send"]).await;
    let (sidecar, gateway) = sidecar(&emu, &[]).await;
    let sent = send(&app_client(), gateway, "dropped", &[], None).await;
    assert_eq!(sent.code, 502, "{}", sent.body);
    assert!(sent.status().is_some_and(|s| s < 0), "{}", sent.body);
    assert!(sent.body.contains("outcome is unknown"), "{}", sent.body);
    // Long enough for any resend to have arrived.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let state = emu.state().await;
    assert_eq!(state["messages_total"], 1, "{state}");
    assert_eq!(logged(&state)["dropped"], 1);
    let status = sidecar.status().await;
    assert_eq!(status["gateway"]["calls"]["outcome_unknown"], 1, "{status}");
    let stopped = sidecar.terminate().await;
    assert_eq!(stopped.code, 0, "{stopped:?}");
    assert!(stopped.stderr.contains("is not sent again"), "{stopped:?}");
}

/// The change the host cannot see: the NAT gateway in front of it leaves from another public
/// address (the emulator translates the peer). Every send the API refuses for the new address
/// is held, re-whitelisted and sent again: none lost, none twice.
#[tokio::test]
async fn a_nat_gateways_address_change_loses_and_repeats_nothing() {
    let emu = Emulator::bastioned(&["--propagation-delay", "1000"]).await;
    // Polls are rare: the refused sends find the change.
    let (sidecar, gateway) = sidecar(&emu, &[("SENDSMS_POLL_INTERVAL", "1h")]).await;
    let start = tokio::time::Instant::now();
    let changes = async {
        for (at, to) in [(2, "198.51.100.7"), (5, "198.51.100.8")] {
            tokio::time::sleep_until(start + Duration::from_secs(at)).await;
            emu.translate("127.0.0.1", to).await;
        }
    };
    let (sent, ()) = tokio::join!(send_stream(gateway, "nat", 200, 25.0), changes);
    assert!(
        sent.iter().all(|s| s.code == 200 && s.status() == Some(1)),
        "{sent:#?}"
    );
    assert_each_logged_once(&emu.state().await, &sent);
    let held = sent.iter().filter(|s| s.held_ms.is_some()).count();
    assert!(
        held >= 2,
        "each change held the sends that found it: {held}"
    );
    assert_eq!(
        emu.whitelist(0).await,
        ["127.0.0.2", "127.0.0.1", "198.51.100.7", "198.51.100.8"]
    );
    assert_eq!(sidecar.terminate().await.code, 0);
}
