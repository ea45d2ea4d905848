//! `demo`: the whole flow against an in-process emulator on loopback, explained as it runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::{Error, Outcome, check, once};
use crate::config::Config;
use crate::emulator::{self, KeyKind, Settings};

/// Any 127.0.0.0/8 address is this host on Linux, so a second one plays the bastion whose
/// egress IP is already whitelisted.
const BASTION: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const USERNAME: &str = "demo";

fn failed(step: &'static str) -> impl FnOnce(Error) -> Error {
    move |source| Error::Demo {
        step,
        source: Box::new(source),
    }
}

pub(crate) async fn run() -> Result<Outcome, Error> {
    let api_key = format!("demo-key-{:016x}", rand::random::<u64>());
    let settings = Settings {
        username: USERNAME.into(),
        keys: vec![(KeyKind::Default, api_key.clone())],
        allow: vec![BASTION],
        ..Settings::default()
    };
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let running = emulator::start(listen, Some(listen), settings)
        .await
        .map_err(|source| Error::Bind {
            what: format!("the demo emulator on {listen}"),
            source,
        })?;
    let base = format!("http://{}", running.addr);
    let dns = running.dns_addr.map(|a| a.to_string()).unwrap_or_default();
    say!("sendsms-whitelister demo: the whole flow, offline, against the built-in emulator.");
    say!();
    say!("1. A stand-in sendSMS API listens on {base}/json with one account ({USERNAME}) and one");
    say!(
        "   IP-locked API key. Its whitelist holds only {BASTION}, the \"bastion\": the path that"
    );
    say!("   is already authorized. This host's own address is not on it, so the key fails here.");

    let config = Config::from_vars(
        [
            ("SENDSMS_USERNAME", USERNAME.to_owned()),
            ("SENDSMS_API_KEY", api_key),
            ("SENDSMS_API_URL", format!("{base}/json")),
            // Two "operators" must agree before an address is trusted: the HTTP echo and the DNS whoami.
            (
                "SENDSMS_IP_PROVIDERS",
                format!(
                    "{base}/ip#emulator-http,dns://{dns}/whoami.demo?type=TXT&class=CH#emulator-dns"
                ),
            ),
            ("SENDSMS_BOOTSTRAP_BIND", BASTION.to_string()),
            ("SENDSMS_ALLOW_NON_PUBLIC_IPS", "true".to_owned()),
            ("SENDSMS_VERIFY_TIMEOUT", "30s".to_owned()),
            ("SENDSMS_REQUEST_TIMEOUT", "5s".to_owned()),
        ]
        .map(|(k, v)| (k.to_owned(), v)),
    )
    .map_err(|e| failed("configure")(e.into()))?;

    say!();
    say!("2. `once`: detect the egress IP (two providers must agree: the emulator's /ip echo and");
    say!("   its DNS whoami on udp://{dns}), try the key from here");
    say!("   (token_list_ips), add the IP with token_add_ip sent from the bastion address, then");
    say!("   call token_list_ips from here until the key works and lists the IP.");
    let reports = once::prove(&config).await.map_err(failed("once"))?;
    for report in &reports {
        say!("   -> {report}");
    }

    say!();
    say!("3. `check`: the read-only proof an operator or a probe would run.");
    let checks = check::inspect(&config).await.map_err(failed("check"))?;
    for check in &checks {
        say!(
            "   -> {} listed: {}; whitelist: {}",
            check.ip,
            if check.usable() {
                "yes, and the key works from it"
            } else {
                "no"
            },
            check
                .whitelist
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(|| "unreadable".into())
        );
    }

    say!();
    say!("4. What the emulator saw, per action (accepted / refused):");
    let state = running.state();
    if let Some(requests) = state
        .pointer("/keys/0/requests")
        .and_then(|r| r.as_object())
    {
        for (action, counts) in requests {
            say!(
                "   {action}: {} / {}",
                counts.get("accepted").unwrap_or(&serde_json::Value::Null),
                counts.get("refused").unwrap_or(&serde_json::Value::Null)
            );
        }
    }
    running.shutdown();
    say!();
    if checks.iter().all(|c| c.usable()) {
        say!("Done: the key now works from this host. In production, point SENDSMS_API_URL at the");
        say!("real API and SENDSMS_BOOTSTRAP_PROXY or SENDSMS_BOOTSTRAP_BIND at your bastion.");
        Ok(Outcome::Success)
    } else {
        say!("demo: check found the IP unusable after once succeeded");
        Ok(Outcome::NotUsable)
    }
}
