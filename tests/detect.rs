//! Quorum detection end to end: honest, lying, slow and garbage providers on loopback.

use std::collections::BTreeSet;
use std::time::Duration;

use harness::{Emulator, fixed_http, run, with};

const BASTION: &str = "127.0.0.2";

/// The operators a `detect` line says agreed: `ipv4 1.2.3.4 (agreed: a, b; 12 ms)`.
fn agreed(line: &str) -> BTreeSet<&str> {
    line.split_once("(agreed: ")
        .and_then(|(_, rest)| rest.split_once(';'))
        .map(|(names, _)| names.split(", ").collect())
        .unwrap_or_else(|| panic!("not a detect line: {line}"))
}

fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

async fn liar(address: &str) -> String {
    let addr = fixed_http(
        "127.0.0.1:0",
        format!("{address}\n").into_bytes(),
        Duration::ZERO,
    )
    .await;
    format!("http://{addr}/")
}

#[tokio::test]
async fn quorum_two_picks_the_honest_address_and_never_sends_the_liars() {
    let emu = Emulator::bastioned(&[]).await;
    let providers = format!("{},{}#liar", emu.providers(), liar("127.0.0.9").await);
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_IP_PROVIDERS", &providers),
            ("SENDSMS_BOOTSTRAP_BIND", BASTION),
        ],
    );
    for _ in 0..5 {
        let once = run(&["once"], &env).await;
        assert_eq!(once.code, 0, "{once:?}");
    }
    assert_eq!(emu.whitelist(0).await, vec![BASTION, "127.0.0.1"]);
    let state = emu.state().await;
    assert_eq!(
        state["keys"][0]["pending"],
        serde_json::json!([]),
        "{state}"
    );
}

#[tokio::test]
async fn two_agreeing_liars_against_one_honest_with_quorum_three_fail_with_exit_3() {
    let emu = Emulator::bastioned(&[]).await;
    let providers = format!(
        "{}#emulator-http,{}#liar-one,{}#liar-two",
        emu.url("/ip"),
        liar("127.0.0.9").await,
        liar("127.0.0.9").await
    );
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_IP_PROVIDERS", &providers),
            ("SENDSMS_IP_QUORUM", "3"),
            ("SENDSMS_BOOTSTRAP_BIND", BASTION),
        ],
    );
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 3, "{once:?}");
    assert!(
        once.stderr.contains("said 127.0.0.9") && once.stderr.contains("said 127.0.0.1"),
        "{once:?}"
    );
    // Only the read that overlaps detection may be spent; nothing is written for a contested IP.
    let requests = emu.state().await["keys"][0]["requests"].clone();
    assert!(requests.get("token_add_ip").is_none(), "{requests}");
    assert!(emu.api_requests().await <= 1, "{requests}");
    assert_eq!(emu.whitelist(0).await, vec![BASTION]);
}

#[tokio::test]
async fn a_hanging_provider_does_not_delay_a_settled_quorum() {
    let emu = Emulator::start(&["--rate-limit", "0"]).await;
    // The slow provider would hold detection for the whole 30 s request timeout: a margin no
    // busy machine eats, where a 3 s timeout against a 2 s limit left one second.
    let slow = fixed_http(
        "127.0.0.1:0",
        b"127.0.0.1\n".to_vec(),
        Duration::from_secs(60),
    )
    .await;
    let providers = format!("{},http://{slow}/#slow", emu.providers());
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_IP_PROVIDERS", &providers),
            ("SENDSMS_REQUEST_TIMEOUT", "30s"),
        ],
    );
    let detect = run(&["detect"], &env).await;
    assert_eq!(detect.code, 0, "{detect:?}");
    assert!(detect.stdout.starts_with("ipv4 127.0.0.1 "), "{detect:?}");
    assert_eq!(
        agreed(&detect.stdout),
        set(&["emulator-http", "emulator-dns"]),
        "{detect:?}"
    );
    assert!(
        detect.elapsed < Duration::from_secs(10),
        "waited for the slow provider: {detect:?}"
    );
}

#[tokio::test]
async fn dns_providers_of_every_type_and_class_agree() {
    let emu = Emulator::start(&["--rate-limit", "0"]).await;
    let dns = emu.dns;
    let providers = format!(
        "dns://{dns}/whoami.test?type=A#a,dns://{dns}/whoami.test?type=TXT#txt,\
         dns://{dns}/whoami.cloudflare?type=TXT&class=CH#ch"
    );
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_IP_PROVIDERS", &providers),
            ("SENDSMS_IP_QUORUM", "3"),
        ],
    );
    let detect = run(&["detect"], &env).await;
    assert_eq!(detect.code, 0, "{detect:?}");
    assert!(detect.stdout.starts_with("ipv4 127.0.0.1 "), "{detect:?}");
    assert_eq!(
        agreed(&detect.stdout),
        set(&["a", "txt", "ch"]),
        "{detect:?}"
    );
}

#[tokio::test]
async fn garbage_bodies_are_each_providers_failure() {
    let emu = Emulator::start(&["--rate-limit", "0"]).await;
    let html = fixed_http(
        "127.0.0.1:0",
        b"<html><body>127.0.0.1</body></html>".to_vec(),
        Duration::ZERO,
    )
    .await;
    let two = fixed_http(
        "127.0.0.1:0",
        b"127.0.0.1 127.0.0.1".to_vec(),
        Duration::ZERO,
    )
    .await;
    let big = fixed_http(
        "127.0.0.1:0",
        [b"127.0.0.1\n".as_slice(), &[b' '; 2048]].concat(),
        Duration::ZERO,
    )
    .await;
    let providers = format!(
        "{}#honest,http://{html}/#html,http://{two}/#two,http://{big}/#big",
        emu.url("/ip")
    );
    let env = with(emu.env(), &[("SENDSMS_IP_PROVIDERS", &providers)]);
    let detect = run(&["detect"], &env).await;
    assert_eq!(detect.code, 3, "{detect:?}");
    assert!(detect.stderr.contains("not an address"), "{detect:?}");
    assert!(detect.stderr.contains("exceeds 1024 bytes"), "{detect:?}");
    assert!(
        detect.stderr.contains("#honest said 127.0.0.1"),
        "{detect:?}"
    );
}

#[tokio::test]
async fn each_family_is_detected_over_its_own_transport() {
    let v4 = Emulator::start(&["--rate-limit", "0"]).await;
    let v6 = Emulator::start_on("[::1]:0", &["--rate-limit", "0"]).await;
    // A v4 endpoint that claims an IPv6 address must not be believed for either family.
    let mixed = liar("::1").await;
    let providers = format!(
        "{},{},{mixed}#mixed",
        v4.providers(),
        v6.providers()
            .replace("emulator", "v6")
            .replace("type=A#", "type=AAAA#")
    );
    let env = with(
        v4.env(),
        &[
            ("SENDSMS_IP_PROVIDERS", &providers),
            ("SENDSMS_IP_FAMILIES", "ipv4,ipv6"),
        ],
    );
    let detect = run(&["detect"], &env).await;
    assert_eq!(detect.code, 0, "{detect:?}");
    let lines: Vec<&str> = detect.stdout.lines().collect();
    assert!(lines[0].starts_with("ipv4 127.0.0.1 "), "{detect:?}");
    assert!(lines[1].starts_with("ipv6 ::1 "), "{detect:?}");
    // Exactly the family's own operators agreed: the mixed one counts for neither.
    assert_eq!(
        agreed(lines[0]),
        set(&["emulator-http", "emulator-dns"]),
        "{detect:?}"
    );
    assert_eq!(agreed(lines[1]), set(&["v6-http", "v6-dns"]), "{detect:?}");
}

#[tokio::test]
async fn non_public_addresses_are_rejected_unless_allowed() {
    let emu = Emulator::start(&["--rate-limit", "0"]).await;
    let env = harness::without(emu.env(), "SENDSMS_ALLOW_NON_PUBLIC_IPS");
    let detect = run(&["detect"], &env).await;
    assert_eq!(detect.code, 3, "{detect:?}");
    assert!(
        detect.stderr.contains("127.0.0.1 is loopback"),
        "{detect:?}"
    );
    let allowed = run(&["detect"], &emu.env()).await;
    assert_eq!(allowed.code, 0, "{allowed:?}");
}

#[tokio::test]
async fn iface_lo_with_the_allow_flag() {
    let env = vec![
        ("SENDSMS_IP_PROVIDERS".to_owned(), "iface:lo".to_owned()),
        ("SENDSMS_IP_QUORUM".to_owned(), "1".to_owned()),
        ("SENDSMS_IP_FAMILIES".to_owned(), "ipv4,ipv6".to_owned()),
    ];
    let refused = run(&["detect"], &env).await;
    assert_eq!(refused.code, 3, "{refused:?}");
    let allowed = run(
        &["detect"],
        &with(env, &[("SENDSMS_ALLOW_NON_PUBLIC_IPS", "true")]),
    )
    .await;
    assert_eq!(allowed.code, 0, "{allowed:?}");
    assert_eq!(
        allowed
            .stdout
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap_or(""))
            .collect::<Vec<_>>(),
        ["127.0.0.1", "::1"]
    );
}
