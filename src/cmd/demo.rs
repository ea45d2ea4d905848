//! `demo`: the whole flow against an in-process emulator on loopback, explained as it runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use super::{Error, Outcome, check, once, run};
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

    let vars = [
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
    .map(|(k, v)| (k.to_owned(), v));
    let config = Config::from_vars(vars.clone()).map_err(|e| failed("configure")(e.into()))?;

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

    let delivered = through_the_gateway(&running, vars).await?;

    say!();
    say!("6. What the emulator saw, per action (accepted / refused):");
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
    if checks.iter().all(|c| c.usable()) && delivered {
        say!("Done: the key now works from this host, and the app sent across an egress change");
        say!(
            "without ever holding the key. In production, point SENDSMS_API_URL at the real API and"
        );
        say!("SENDSMS_BOOTSTRAP_PROXY or SENDSMS_BOOTSTRAP_BIND at your bastion.");
        Ok(Outcome::Success)
    } else {
        say!("demo: the key is not usable from here, or a message was not delivered exactly once");
        Ok(Outcome::NotUsable)
    }
}

/// The address a NAT gateway in front of this host takes in the demo; the host never sees it.
const NEW_EGRESS: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

/// Steps 4 and 5: `run` with the gateway, a send through it, then one across an egress change.
/// True when both messages are in the emulator's log, each once.
async fn through_the_gateway(
    running: &emulator::RunningEmulator,
    vars: [(String, String); 8],
) -> Result<bool, Error> {
    let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).to_string();
    let extra = [
        ("SENDSMS_LISTEN", loopback.clone()),
        ("SENDSMS_GATEWAY_LISTEN", loopback),
        // Only the refused send may find the change: no poll comes first.
        ("SENDSMS_POLL_INTERVAL", "1h".to_owned()),
        ("SENDSMS_GATEWAY_HOLD", "20s".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v));
    let config = Config::from_vars(vars.into_iter().chain(extra))
        .map_err(|e| failed("configure the gateway")(e.into()))?;
    let listeners = run::Listeners::bind(&config)
        .await
        .map_err(failed("start the gateway"))?;
    let (Some(gateway), Some(status)) = (listeners.gateway(), listeners.status()) else {
        return Ok(false);
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sidecar = run::serve(config, listeners, async {
        let _ = stopped.await;
    });
    let steps = async {
        let delivered = sends(running, gateway, status).await;
        let _ = stop.send(());
        delivered
    };
    let (served, delivered) = tokio::join!(sidecar, steps);
    served.map_err(failed("run with the gateway"))?;
    Ok(delivered)
}

async fn sends(
    running: &emulator::RunningEmulator,
    gateway: SocketAddr,
    status: SocketAddr,
) -> bool {
    let Ok(client) = crate::http::client_builder(Duration::from_secs(30), None).build() else {
        return false;
    };
    say!();
    say!(
        "4. `run` with SENDSMS_GATEWAY_LISTEN: the sidecar keeps the address whitelisted, and the"
    );
    say!("   app sends through http://{gateway}/json with no credentials at all: the gateway");
    say!("   adds the account's, over the direct route.");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = |answer: Option<(u16, String)>| answer.is_some_and(|(code, _)| code == 200);
    while !ready(get(&client, format!("http://{status}/readyz")).await) {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let send = |text: &str| {
        let url = format!("http://{gateway}/json?action=message_send&to=0722000000&text={text}");
        get(&client, url)
    };
    if let Some((code, body)) = send("first").await {
        say!("   -> HTTP {code}: {body}");
    }

    say!();
    say!("5. The NAT gateway in front of this host now leaves from {NEW_EGRESS}; the host itself");
    say!("   sees no change. The next send is refused by the API for that address (-8).");
    running.translate(IpAddr::V4(Ipv4Addr::LOCALHOST), NEW_EGRESS);
    let started = Instant::now();
    let second = send("second").await;
    let took = started.elapsed();
    if let Some((code, body)) = second {
        say!("   -> HTTP {code} after {took:.0?}: {body}");
    }
    say!("   The gateway held it and asked for a recheck at once; the sidecar found {NEW_EGRESS},");
    say!("   whitelisted it through the bastion and proved it; the gateway sent it once more.");
    if let Some((_, body)) = get(&client, format!("http://{status}/status")).await {
        let calls = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|s| s.pointer("/gateway/calls").cloned())
            .unwrap_or_default();
        say!("   /status, gateway calls by outcome: {calls}");
    }
    let state = running.state();
    let messages = state["messages"].as_array().cloned().unwrap_or_default();
    for message in &messages {
        say!(
            "   logged once: {} {:?} from {}, credentials {}",
            message["id"].as_str().unwrap_or_default(),
            message["text"].as_str().unwrap_or_default(),
            message["peer"].as_str().unwrap_or_default(),
            message["credentials"]
        );
    }
    let texts: Vec<&str> = messages.iter().filter_map(|m| m["text"].as_str()).collect();
    texts == ["first", "second"]
}

/// A GET's status and body; None when it got no answer.
async fn get(client: &reqwest::Client, url: String) -> Option<(u16, String)> {
    let response = client.get(url).send().await.ok()?;
    let code = response.status().as_u16();
    Some((code, response.text().await.ok()?))
}
