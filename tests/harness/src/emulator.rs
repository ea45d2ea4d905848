//! The sendSMS API emulator as a child process (`sendsms-whitelister emulator`), on loopback
//! or on a test network's address, with its state read back over HTTP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;

use crate::binary::command;
use crate::child::Watched;
use crate::env::Env;
use crate::http::http_client;
use crate::secrets::KEY;

/// The account every test uses.
pub const USERNAME: &str = "tester";

/// An emulator child process with its HTTP and DNS addresses; killed and checked on drop.
pub struct Emulator {
    child: Watched,
    pub addr: SocketAddr,
    pub dns: SocketAddr,
}

impl Emulator {
    /// `extra` are emulator flags; the account, the key and a free loopback port are added here.
    pub async fn start(extra: &[&str]) -> Emulator {
        Self::start_on("127.0.0.1:0", extra).await
    }

    /// The usual set-up: the key already allows the bastion 127.0.0.2, and no rate limit.
    pub async fn bastioned(extra: &[&str]) -> Emulator {
        let args: Vec<&str> = ["--allow", "127.0.0.2", "--rate-limit", "0"]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        Self::start(&args).await
    }

    /// On `listen` (HTTP) and the same address (UDP DNS whoami).
    pub async fn start_on(listen: &str, extra: &[&str]) -> Emulator {
        let mut args = vec!["emulator", "--listen", listen, "--dns-listen", listen];
        args.extend(["--username", USERNAME, "--default-key", KEY]);
        args.extend_from_slice(extra);
        let child = Watched::spawn(format!("emulator on {listen}"), command(&[], &args, &[]));
        let announced = child
            .wait_for_stdout("its two addresses", Duration::from_secs(10), |text| {
                text.split_once("dns listening on udp://")
                    .is_some_and(|(_, rest)| rest.contains('\n'))
            })
            .await;
        let address = |prefix: &str| -> SocketAddr {
            announced
                .lines()
                .find_map(|line| line.strip_prefix(prefix))
                .and_then(|addr| addr.trim().parse().ok())
                .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{announced}"))
        };
        Emulator {
            addr: address("listening on http://"),
            dns: address("dns listening on udp://"),
            child,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What the emulator printed so far, checked for secrets.
    pub fn output(&self) -> String {
        self.child.output()
    }

    /// `/_emulator/state`: per key its whitelist, pending additions and request counts.
    pub async fn state(&self) -> Value {
        let client = http_client().build().expect("client");
        json(client.get(self.url("/_emulator/state")), "state").await
    }

    /// (accepted, refused) for one action on key `index`.
    pub async fn requests(&self, index: usize, action: &str) -> (u64, u64) {
        let state = self.state().await;
        let counts = &state["keys"][index]["requests"][action];
        (
            counts["accepted"].as_u64().unwrap_or(0),
            counts["refused"].as_u64().unwrap_or(0),
        )
    }

    /// Total sendSMS requests key 0 saw (accepted and refused, every action); injected faults
    /// are answered before any action and not counted.
    pub async fn api_requests(&self) -> u64 {
        let state = self.state().await;
        state["keys"][0]["requests"]
            .as_object()
            .map(|actions| {
                actions
                    .values()
                    .map(|c| {
                        c["accepted"].as_u64().unwrap_or(0) + c["refused"].as_u64().unwrap_or(0)
                    })
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Requests answered as rate-limited, for the whole account.
    pub async fn rate_limited(&self) -> u64 {
        self.state().await["rate_limited_requests"]
            .as_u64()
            .expect("rate_limited_requests in the state")
    }

    pub async fn whitelist(&self, index: usize) -> Vec<String> {
        let state = self.state().await;
        state["keys"][index]["whitelist"]
            .as_array()
            .expect("whitelist array")
            .iter()
            .map(|v| v.as_str().expect("string").to_owned())
            .collect()
    }

    /// Takes `ip` off key `index`'s whitelist, as a user in the web UI would; how many went.
    pub async fn remove_ip(&self, index: usize, ip: &str) -> u64 {
        let client = http_client().build().expect("client");
        let url = self.url(&format!("/_emulator/remove-ip?key={index}&ip={ip}"));
        let answer = json(client.post(url), "remove-ip").await;
        answer["removed"].as_u64().expect("removed count")
    }

    /// From now on the emulator sees traffic from `from` as coming from `to`: what a NAT
    /// gateway in front of the host does when its public address changes.
    pub async fn translate(&self, from: &str, to: &str) {
        let client = http_client().build().expect("client");
        let url = self.url(&format!("/_emulator/egress?from={from}&to={to}"));
        let answer = json(client.post(url), "egress").await;
        assert_eq!(answer["to"], to, "{answer}");
    }

    /// Calls the API as a client bound to `from`, the way another host would.
    pub async fn call_from(&self, from: IpAddr, params: &[(&str, &str)]) -> Value {
        let client = http_client().local_address(from).build().expect("client");
        let mut url = url::Url::parse(&self.url("/json")).expect("url");
        url.query_pairs_mut().extend_pairs(params);
        json(client.get(url), "api call").await
    }

    /// Two honest providers run by different "operators": the HTTP echo and the DNS whoami.
    pub fn providers(&self) -> String {
        format!(
            "{}#emulator-http,dns://{}/whoami.test?type=A#emulator-dns",
            self.url("/ip"),
            self.dns
        )
    }

    /// The environment that points the binary at this emulator.
    pub fn env(&self) -> Env {
        [
            ("SENDSMS_USERNAME", USERNAME.to_owned()),
            ("SENDSMS_API_KEY", KEY.to_owned()),
            ("SENDSMS_API_URL", self.url("/json")),
            ("SENDSMS_IP_PROVIDERS", self.providers()),
            ("SENDSMS_ALLOW_NON_PUBLIC_IPS", "true".to_owned()),
            ("SENDSMS_VERIFY_TIMEOUT", "20s".to_owned()),
            ("SENDSMS_REQUEST_TIMEOUT", "3s".to_owned()),
            ("SENDSMS_LOG_FORMAT", "text".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }
}

/// Sends `request` and decodes the JSON answer; `what` names it when that fails.
async fn json(request: reqwest::RequestBuilder, what: &str) -> Value {
    let body = request
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{what} body: {e}"));
    serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{what} json: {e}: {}", String::from_utf8_lossy(&body)))
}
