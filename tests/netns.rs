//! A real egress IP change: `run` inside a network namespace of the test's own, the emulator outside.
//! Needs root and iproute2: CI has both; elsewhere the test says loudly that it did not run.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{Emulator, Sidecar, api_requests, require_tool, with};

const HOST: &str = "198.18.0.1";
const FIRST: &str = "198.18.0.2";
const SECOND: &str = "198.18.0.3";
const BASTION: &str = "198.18.0.100";

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

/// A namespace joined to the host by a veth pair; both are removed on drop.
struct TestNet {
    namespace: String,
    host_link: String,
    ns_link: String,
}

impl TestNet {
    fn create() -> Option<TestNet> {
        require_tool("ip")?;
        let uid = Command::new("id").arg("-u").output().ok()?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            let message = "the network-namespace test needs root";
            assert!(std::env::var_os("CI").is_none(), "{message}");
            eprintln!("NOT RUN: {message}");
            return None;
        }
        let id = std::process::id() % 100_000;
        let net = TestNet {
            namespace: format!("ssw-test-{id}"),
            host_link: format!("sswh{id}"),
            ns_link: format!("sswn{id}"),
        };
        let (ns, host, inner) = (net.namespace.as_str(), net.host_link.as_str(), net.ns_link.as_str());
        ip(&["netns", "add", ns]);
        ip(&["link", "add", host, "type", "veth", "peer", "name", inner, "netns", ns]);
        ip(&["addr", "add", &format!("{HOST}/24"), "dev", host]);
        ip(&["link", "set", host, "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        ip(&["-n", ns, "link", "set", inner, "up"]);
        ip(&["-n", ns, "addr", "add", &format!("{FIRST}/24"), "dev", inner]);
        ip(&["-n", ns, "addr", "add", &format!("{BASTION}/24"), "dev", inner]);
        Some(net)
    }

    /// Replaces the namespace's egress address: the first address of the link is the source
    /// of its traffic, so the bastion address is added back after the new one.
    fn change_address(&self, to: &str) {
        let (ns, inner) = (self.namespace.as_str(), self.ns_link.as_str());
        ip(&["-n", ns, "addr", "flush", "dev", inner]);
        ip(&["-n", ns, "addr", "add", &format!("{to}/24"), "dev", inner]);
        ip(&["-n", ns, "addr", "add", &format!("{BASTION}/24"), "dev", inner]);
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.namespace]).status();
        let _ = Command::new("ip").args(["link", "del", &self.host_link]).status();
    }
}

#[tokio::test]
async fn a_real_egress_ip_change_is_followed() {
    let Some(net) = TestNet::create() else { return };
    let emu = Emulator::start_on(
        &format!("{HOST}:0"),
        &["--allow", BASTION, "--rate-limit", "0", "--propagation-delay", "1500"],
    )
    .await;
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_ALLOW_INSECURE_API_URL", "true"),
            ("SENDSMS_BOOTSTRAP_BIND", BASTION),
            ("SENDSMS_POLL_INTERVAL", "300ms"),
            ("SENDSMS_LOG_FORMAT", "json"),
            ("SENDSMS_API_BUDGET", "60"),
        ],
    );
    let listen: SocketAddr = "0.0.0.0:9797".parse().expect("addr");
    let mut sidecar = Sidecar::start_with(&["ip", "netns", "exec", &net.namespace], &env, listen).await;
    sidecar.status = format!("{FIRST}:9797").parse().expect("addr");

    sidecar.wait_readyz(200, Duration::from_secs(20)).await;
    assert_eq!(emu.whitelist(0).await, vec![BASTION, FIRST]);
    assert_eq!(emu.requests(0, "token_add_ip").await, (1, 0));
    let (code, _) = sidecar.request(reqwest::Method::POST, "/recheck").await;
    assert_eq!(code, 403, "a recheck from another host is refused");

    let idle = api_requests(&emu).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(api_requests(&emu).await, idle, "idle polls called the API");

    net.change_address(SECOND);
    sidecar.status = format!("{SECOND}:9797").parse().expect("addr");
    sidecar.wait_readyz(503, Duration::from_secs(10)).await;
    sidecar.wait_readyz(200, Duration::from_secs(20)).await;
    assert_eq!(emu.whitelist(0).await, vec![BASTION, FIRST, SECOND]);

    // Exactly: per address one refused read, one add, refused reads while the 1.5 s
    // propagation runs, and one accepted read; nothing else, nothing while idle.
    let settled = api_requests(&emu).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(api_requests(&emu).await, settled, "idle polls called the API");
    assert_eq!(emu.requests(0, "token_add_ip").await, (2, 0));
    let (listed, refused) = emu.requests(0, "token_list_ips").await;
    assert_eq!(listed, 2, "one proof per address");
    assert!(refused >= 4, "each address was refused before it took effect: {refused}");
    let output = sidecar.output();
    assert!(output.contains("egress IP changed"), "{output}");
    let (code, took) = sidecar.terminate().await;
    assert_eq!(code, 0);
    assert!(took < Duration::from_secs(5));
}
