//! Common mistakes, as a new user makes them: each gets the right cause, the right exit code,
//! and, where nothing can clear it by waiting, an exit in seconds (issue 16). One test per
//! mistake; each prints what it measured.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{
    Emulator, Env, Exited, KEY, Run, Sidecar, USERNAME, Watched, binary, fixed_http, free_port,
    require_root, require_tool, run, with, without,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::process::Command;

const BASTION: &str = "127.0.0.2";

/// "At once": the process starts, reads its configuration and stops, with nothing to wait for.
const AT_ONCE: Duration = Duration::from_secs(2);

fn report(mistake: &str, run: &Run) {
    let first = run
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .or_else(|| run.stdout.lines().next())
        .unwrap_or("");
    eprintln!(
        "{mistake}: exit {} in {:.2} s: {first}",
        run.code,
        run.elapsed.as_secs_f64()
    );
}

fn assert_says(run: &Run, phrases: &[&str]) {
    for phrase in phrases {
        assert!(
            run.stderr.contains(phrase) || run.stdout.contains(phrase),
            "{phrase:?} missing: {run:?}"
        );
    }
}

/// Each of `commands` exits 2 at once, saying `phrases` (`run` too: before it listens).
async fn refused_at_start(mistake: &str, commands: &[&str], env: &Env, phrases: &[&str]) {
    let listen = format!("127.0.0.1:{}", free_port());
    let env = with(env.clone(), &[("SENDSMS_LISTEN", &listen)]);
    for command in commands {
        let result = run(&[command], &env).await;
        report(&format!("{mistake} ({command})"), &result);
        assert_eq!(result.code, 2, "{command}: {result:?}");
        assert_says(&result, phrases);
        assert!(result.elapsed < AT_ONCE, "{command}: {result:?}");
    }
}

#[tokio::test]
async fn wrong_credentials_through_a_bastion_name_both_causes_and_quote_the_api() {
    let emu = Emulator::bastioned(&[]).await;
    let bastioned = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", BASTION)]);
    // The harness's leak check covers it, as the value of SENDSMS_API_KEY.
    let wrong_key = "wr0ng-key-4b1d";
    for (what, change) in [
        ("wrong key", ("SENDSMS_API_KEY", wrong_key)),
        ("wrong user name", ("SENDSMS_USERNAME", "somebody-else")),
    ] {
        let once = run(&["once"], &with(bastioned.clone(), &[change])).await;
        report(what, &once);
        assert_eq!(once.code, 4, "{what}: {once:?}");
        assert_says(
            &once,
            &[
                // The API's own words, quoted.
                "status -8: \"Authentication failed\"",
                "bootstrap bind address 127.0.0.2 (SENDSMS_BOOTSTRAP_BIND)",
                "SENDSMS_USERNAME",
                "SENDSMS_API_KEY",
                "not on the key's whitelist",
                "Account >> API Keys",
                "Locked On IP",
            ],
        );
    }
    assert_eq!(emu.whitelist(0).await, vec![BASTION], "nothing was added");

    // An API that echoes the request in its message: quoted, without the key.
    let echo = format!(
        r#"{{"status":-8,"message":"Authentication failed for username={USERNAME}&password={KEY}","details":null}}"#
    );
    let api = fixed_http("127.0.0.1:0", echo.into_bytes(), Duration::ZERO).await;
    let env = with(
        bastioned,
        &[("SENDSMS_API_URL", &format!("http://{api}/json"))],
    );
    let once = run(&["once"], &env).await;
    assert_eq!(once.code, 4, "{once:?}");
    assert_says(
        &once,
        &[&format!(
            "\"Authentication failed for username={USERNAME}&password=[REDACTED]\""
        )],
    );
}

#[tokio::test]
async fn an_api_url_that_is_not_the_api_is_a_configuration_error() {
    let emu = Emulator::bastioned(&[]).await;
    let wrong_path = with(
        emu.env(),
        &[
            ("SENDSMS_API_URL", &emu.url("/jsn")),
            ("SENDSMS_BOOTSTRAP_BIND", BASTION),
            ("SENDSMS_VERIFY_TIMEOUT", "60s"),
        ],
    );
    let named = format!(
        "http://{}/jsn does not look like the sendSMS API: it answered HTTP 404",
        emu.addr
    );
    let check = run(&["check"], &wrong_path).await;
    report("API URL ending in /jsn (check)", &check);
    assert_eq!(check.code, 2, "{check:?}");
    assert_says(&check, &[&named, "Check SENDSMS_API_URL"]);
    assert!(
        !check.stdout.contains("key works from this host: no"),
        "{check:?}"
    );
    let once = run(&["once"], &wrong_path).await;
    report("API URL ending in /jsn (once)", &once);
    assert_eq!(once.code, 2, "{once:?}");
    assert_says(&once, &[&named]);
    assert!(
        !once.stderr.contains("action=") && !once.stderr.contains("password"),
        "the URL is shown without its query: {once:?}"
    );
    // `run`: the URL never worked, so no round can ever succeed: it stops as a configuration
    // error instead of retrying for ever.
    let listen = format!("127.0.0.1:{}", free_port());
    let sidecar = run(&["run"], &with(wrong_path, &[("SENDSMS_LISTEN", &listen)])).await;
    report("API URL ending in /jsn (run)", &sidecar);
    assert_eq!(sidecar.code, 2, "{sidecar:?}");
    assert_says(&sidecar, &[&named]);
    assert!(
        once.elapsed < AT_ONCE * 2 && sidecar.elapsed < AT_ONCE * 2,
        "{once:?} {sidecar:?}"
    );
    assert_eq!(emu.whitelist(0).await, vec![BASTION], "nothing was added");

    // An answer that is not a JSON object at all, with HTTP 200.
    let page = fixed_http(
        "127.0.0.1:0",
        b"<html><body>Welcome</body></html>".to_vec(),
        Duration::ZERO,
    )
    .await;
    let env = with(
        emu.env(),
        &[("SENDSMS_API_URL", &format!("http://{page}/json"))],
    );
    let once = run(&["once"], &env).await;
    report("API URL of a web page (once)", &once);
    assert_eq!(once.code, 2, "{once:?}");
    assert_says(
        &once,
        &[
            &format!("http://{page}/json does not look like the sendSMS API"),
            "not a JSON object",
            "SENDSMS_API_URL",
        ],
    );
}

#[tokio::test]
async fn a_bind_address_this_host_does_not_have_exits_2_at_once() {
    let emu = Emulator::bastioned(&[]).await;
    // TEST-NET-1 (RFC 5737): no host has it, and a socket bound to it sends nothing.
    let env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", "192.0.2.1")]);
    refused_at_start(
        "absent bind address",
        &["once", "check", "run"],
        &env,
        &[
            "SENDSMS_BOOTSTRAP_BIND",
            "192.0.2.1 is not an address of this host",
        ],
    )
    .await;
    assert_eq!(emu.api_requests().await, 0, "nothing was asked");
}

/// Holds a loopback port bound but not listening: connections to it are refused, and no other
/// test can take it meanwhile.
fn refusing_port() -> (TcpSocket, SocketAddr) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

#[tokio::test]
async fn a_bootstrap_proxy_that_refuses_connections_exits_4_quickly() {
    let emu = Emulator::bastioned(&[]).await;
    let (_held, closed) = refusing_port();
    let env = with(
        emu.env(),
        &[
            (
                "SENDSMS_BOOTSTRAP_PROXY",
                &format!("http://proxyuser:pr0xy-pass@{closed}"),
            ),
            ("SENDSMS_VERIFY_TIMEOUT", "120s"),
        ],
    );
    let once = run(&["once"], &env).await;
    report("bootstrap proxy port closed", &once);
    assert_eq!(once.code, 4, "{once:?}");
    assert_says(
        &once,
        &[
            &format!("bootstrap proxy http://{closed} (SENDSMS_BOOTSTRAP_PROXY) cannot be reached"),
            "Connection refused",
            "instead of waiting out SENDSMS_VERIFY_TIMEOUT",
        ],
    );
    assert!(once.elapsed < Duration::from_secs(10), "{once:?}");
}

/// A network namespace with only loopback, whose resolver is 127.0.0.1, where nothing
/// listens: every name fails to resolve inside it, and no packet can leave it. Removed on drop.
struct Isolated {
    name: String,
}

impl Isolated {
    fn create(tag: &str) -> Option<Isolated> {
        require_tool("ip")?;
        if !require_root() {
            return None;
        }
        let name = format!("ssw-{tag}-{}", std::process::id() % 100_000);
        let isolated = Isolated { name };
        ip(&["netns", "add", &isolated.name]);
        ip(&["-n", &isolated.name, "link", "set", "lo", "up"]);
        // `ip netns exec` mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf.
        let etc = isolated.etc();
        std::fs::create_dir_all(&etc).expect("/etc/netns/NAME");
        // A resolver that answers gives NXDOMAIN for a typo at once; one that never answers
        // fails after the resolver's own timeout (resolv.conf options): one second here.
        std::fs::write(
            etc.join("resolv.conf"),
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        )
        .expect("resolv.conf");
        Some(isolated)
    }

    fn etc(&self) -> std::path::PathBuf {
        Path::new("/etc/netns").join(&self.name)
    }

    /// The binary inside the namespace, watched (and leak-checked) by the harness.
    fn spawn(&self, args: &[&str], env: &Env) -> Watched {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .arg(binary())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Watched::spawn(format!("{} in {}", args.join(" "), self.name), command)
    }

    /// An emulator inside the namespace, and the port it listens on.
    async fn emulator(&self) -> (Watched, u16) {
        let child = self.spawn(
            &[
                "emulator",
                "--listen",
                "127.0.0.1:0",
                "--username",
                USERNAME,
                "--default-key",
                KEY,
                "--allow",
                BASTION,
                "--rate-limit",
                "0",
            ],
            &Env::new(),
        );
        let announced = child
            .wait_for_stdout("its address", Duration::from_secs(10), |t| t.contains('\n'))
            .await;
        let port = announced
            .lines()
            .next()
            .and_then(|line| line.rsplit(':').next())
            .and_then(|port| port.trim().parse().ok())
            .unwrap_or_else(|| panic!("no address in: {announced}"));
        (child, port)
    }

    async fn run(&self, args: &[&str], env: &Env) -> Run {
        exited(self.spawn(args, env), Duration::from_secs(300)).await
    }
}

/// Waits for `child` to end, as a `Run`.
async fn exited(mut child: Watched, within: Duration) -> Run {
    let started = Instant::now();
    let Exited {
        code,
        stdout,
        stderr,
        ..
    } = child.wait(within).await;
    Run {
        code,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(self.etc());
    }
}

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("run ip");
    assert!(status.success(), "ip {args:?} failed");
}

#[tokio::test]
async fn a_bootstrap_proxy_whose_name_does_not_resolve_exits_4_quickly() {
    let Some(isolated) = Isolated::create("dns") else {
        return;
    };
    let (_emulator, port) = isolated.emulator().await;
    let env: Env = [
        ("SENDSMS_USERNAME", USERNAME.to_owned()),
        ("SENDSMS_API_KEY", KEY.to_owned()),
        ("SENDSMS_API_URL", format!("http://127.0.0.1:{port}/json")),
        (
            "SENDSMS_IP_PROVIDERS",
            format!("http://127.0.0.1:{port}/ip#emulator,iface:lo#interface"),
        ),
        ("SENDSMS_ALLOW_NON_PUBLIC_IPS", "true".to_owned()),
        (
            "SENDSMS_BOOTSTRAP_PROXY",
            "http://proxyuser:pr0xy-pass@bastoin.internal:3128".to_owned(),
        ),
        ("SENDSMS_VERIFY_TIMEOUT", "120s".to_owned()),
        ("SENDSMS_LOG_FORMAT", "text".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let once = isolated.run(&["once"], &env).await;
    report("bootstrap proxy host name typo", &once);
    assert_eq!(once.code, 4, "{once:?}");
    assert_says(
        &once,
        &[
            "bootstrap proxy http://bastoin.internal:3128 (SENDSMS_BOOTSTRAP_PROXY) cannot be reached",
            "dns error",
            "host name and port in SENDSMS_BOOTSTRAP_PROXY",
        ],
    );
    assert!(once.elapsed < Duration::from_secs(10), "{once:?}");
}

#[tokio::test]
async fn a_quorum_the_providers_cannot_meet_exits_2_at_start() {
    let emu = Emulator::bastioned(&[]).await;
    let three_of_two = with(emu.env(), &[("SENDSMS_IP_QUORUM", "3")]);
    refused_at_start(
        "quorum 3 of 2 operators",
        &["once", "check", "detect", "run"],
        &three_of_two,
        &[
            "SENDSMS_IP_QUORUM is 3",
            "ipv4: 2 (emulator-dns, emulator-http)",
            "#OPERATOR",
        ],
    )
    .await;
    // Two providers on one host are one operator unless named apart.
    let echo = emu.url("/ip");
    let one_host = with(
        emu.env(),
        &[("SENDSMS_IP_PROVIDERS", &format!("{echo},{echo}?again"))],
    );
    let once = run(&["once"], &one_host).await;
    report("two providers on one domain", &once);
    assert_eq!(once.code, 2, "{once:?}");
    assert_says(
        &once,
        &["SENDSMS_IP_QUORUM is 2", "ipv4: 1 (127.0.0.1)", "#OPERATOR"],
    );
    assert_eq!(emu.api_requests().await, 0, "nothing was asked");
}

#[tokio::test]
async fn a_cloud_key_is_not_ip_locked_and_nothing_is_written() {
    let cloud = "cl0ud-key-9e4a";
    let emu = Emulator::bastioned(&["--cloud-key", cloud]).await;
    // The cloud key is the second key (index 1); this host's address is on no whitelist.
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_API_KEY", cloud),
            ("SENDSMS_BOOTSTRAP_BIND", BASTION),
        ],
    );
    let check = run(&["check"], &env).await;
    report("a Cloud key (check)", &check);
    assert_eq!(check.code, 0, "{check:?}");
    assert_says(
        &check,
        &[
            "key works from this host: yes",
            "listed: no",
            "not IP-locked",
        ],
    );

    let once = run(&["once"], &env).await;
    report("a Cloud key (once)", &once);
    assert_eq!(once.code, 0, "{once:?}");
    assert_eq!(
        once.stderr
            .matches("this tool is not needed for this key")
            .count(),
        1,
        "one warning: {once:?}"
    );
    assert!(
        once.stdout.contains("not IP-locked; nothing written"),
        "{once:?}"
    );

    let sidecar = Sidecar::start(&env).await;
    sidecar.wait_readyz(200, Duration::from_secs(20)).await;
    let output = sidecar.output();
    assert_eq!(
        output
            .matches("this tool is not needed for this key")
            .count(),
        1,
        "one warning: {output}"
    );
    assert_eq!(sidecar.terminate().await.code, 0);
    assert_eq!(
        emu.requests(1, "token_add_ip").await,
        (0, 0),
        "nothing written"
    );
    assert!(emu.requests(1, "token_list_ips").await.0 >= 3);
}

#[tokio::test]
async fn waits_longer_than_two_seconds_are_logged_and_listed_in_status() {
    // Every API answer is "rate-limited" for the first 4 s: the read waits at least 6 s.
    let emu = Emulator::bastioned(&["--rate-limited-for", "4000"]).await;
    let env = with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", BASTION)]);
    let once = run(&["once"], &env).await;
    report("rate-limited for 4 s (once)", &once);
    assert_eq!(once.code, 0, "{once:?}");
    let line = once
        .stderr
        .lines()
        .find(|l| l.contains("waiting") && l.contains("rate-limiting this account"))
        .unwrap_or_else(|| panic!("no wait logged: {once:?}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(
        line.contains("wait=6.") || line.contains("wait=7."),
        "{line}"
    );

    // `run` with a budget of one call a minute: the add waits for the budget, in /status. The
    // verify timeout is the default 120 s: a budget wait never runs past it (issue 14), and
    // the 20 s of the emulator's environment would refuse the call instead of waiting.
    let emu = Emulator::bastioned(&[]).await;
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_BOOTSTRAP_BIND", BASTION),
            ("SENDSMS_API_BUDGET", "1"),
            ("SENDSMS_VERIFY_TIMEOUT", "120s"),
        ],
    );
    let sidecar = Sidecar::start(&env).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let wait = loop {
        let status = sidecar.status().await;
        if let Some(wait) = status["waits"].as_array().and_then(|w| w.first()) {
            break wait.clone();
        }
        assert!(Instant::now() < deadline, "no wait in /status: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cause = wait["cause"].as_str().unwrap_or_default();
    assert!(cause.contains("SENDSMS_API_BUDGET=1"), "{wait}");
    assert!(wait["seconds"].as_f64().unwrap_or(0.0) > 50.0, "{wait}");
    assert!(
        wait["until"].is_string() && wait["since"].is_string(),
        "{wait}"
    );
    let output = sidecar.output();
    assert!(
        output.contains("waiting") && output.contains("SENDSMS_API_BUDGET=1"),
        "{output}"
    );
    assert_eq!(sidecar.terminate().await.code, 0);
}

/// A CA of the test's own, and server configurations for `127.0.0.1` signed by it.
struct TestCa {
    pem: String,
    server: Arc<tokio_rustls::rustls::ServerConfig>,
}

impl TestCa {
    fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "re-signing proxy test CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("server params")
            .signed_by(&key, &issuer)
            .expect("server certificate");
        let server = tokio_rustls::rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
        TestCa {
            pem: ca_cert.pem(),
            server: Arc::new(server),
        }
    }

    /// A TLS listener on loopback; each accepted connection, decrypted, goes to `serve` with
    /// the client's address.
    async fn listen<F, Fut>(&self, serve: F) -> SocketAddr
    where
        F: Fn(tokio_rustls::server::TlsStream<TcpStream>, IpAddr) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&self.server));
        tokio::spawn(async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let acceptor = acceptor.clone();
                // A handshake the client refused ends here.
                if let Ok(tls) = acceptor.accept(stream).await {
                    tokio::spawn(serve(tls, peer.ip()));
                }
            }
        });
        addr
    }
}

/// A connection to `to` from `from` (any loopback address is this host's), so the emulator
/// behind a TLS front or a proxy sees the address it would see without them.
async fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(from, 0)).expect("bind");
    socket.connect(to).await.expect("connect")
}

#[tokio::test]
async fn an_extra_ca_file_trusts_a_re_signing_proxy_for_the_api_and_the_bootstrap_proxy() {
    let emu = Emulator::bastioned(&[]).await;
    let ca = TestCa::new();
    // The API behind TLS signed by the test CA, as a re-signing proxy would present it.
    let api_port = emu.addr;
    let api = ca
        .listen(move |mut tls, peer| async move {
            let mut upstream = connect_from(peer, api_port).await;
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
        })
        .await;
    // An https:// bootstrap proxy (CONNECT) whose egress address is the bastion.
    let proxy = ca
        .listen(|mut tls, _| async move {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && tls.read(&mut byte).await.unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            let Some(target) = head
                .strip_prefix("CONNECT ")
                .and_then(|rest| rest.split(' ').next())
                .and_then(|t| t.parse::<SocketAddr>().ok())
            else {
                return;
            };
            let mut upstream = connect_from(BASTION.parse().expect("ip"), target).await;
            if tls
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .is_ok()
            {
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            }
        })
        .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("corporate-ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("CA file");
    let env = with(
        emu.env(),
        &[
            ("SENDSMS_API_URL", &format!("https://{api}/json")),
            ("SENDSMS_BOOTSTRAP_PROXY", &format!("https://{proxy}")),
            ("SENDSMS_VERIFY_TIMEOUT", "3s"),
        ],
    );

    let refused = run(&["once"], &env).await;
    report("TLS re-signed, no SENDSMS_EXTRA_CA_FILE", &refused);
    assert_eq!(refused.code, 5, "{refused:?}");
    assert_says(
        &refused,
        &["invalid peer certificate", "SENDSMS_EXTRA_CA_FILE"],
    );
    assert_eq!(emu.whitelist(0).await, vec![BASTION], "nothing got through");

    let trusted = with(
        env.clone(),
        &[("SENDSMS_EXTRA_CA_FILE", &ca_file.display().to_string())],
    );
    let once = run(&["once"], &trusted).await;
    report("TLS re-signed, with SENDSMS_EXTRA_CA_FILE", &once);
    assert_eq!(once.code, 0, "{once:?}");
    assert!(
        once.stdout.contains("127.0.0.1 whitelisted and verified"),
        "{once:?}"
    );
    assert_eq!(
        emu.requests(0, "token_add_ip").await,
        (1, 0),
        "added through the proxy"
    );
    assert_eq!(emu.whitelist(0).await, vec![BASTION, "127.0.0.1"]);

    let junk = dir.path().join("not-a-ca.pem");
    std::fs::write(&junk, "this is not a certificate\n").expect("junk file");
    let bad = run(
        &["once"],
        &with(
            env,
            &[("SENDSMS_EXTRA_CA_FILE", &junk.display().to_string())],
        ),
    )
    .await;
    report("SENDSMS_EXTRA_CA_FILE not a PEM file", &bad);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert_says(&bad, &["SENDSMS_EXTRA_CA_FILE", "no PEM certificate"]);
    assert!(bad.elapsed < AT_ONCE, "{bad:?}");
}

/// A user adds the corporate CA to the host's store and expects the sidecar to trust it: it
/// never does (Mozilla's roots are built in), for detection and the API alike, and the error
/// points at `SENDSMS_EXTRA_CA_FILE`.
#[tokio::test]
async fn a_ca_in_the_hosts_store_is_never_trusted() {
    let emu = Emulator::bastioned(&[]).await;
    let ca = TestCa::new();
    let upstream = emu.addr;
    let front = ca
        .listen(move |mut tls, peer| async move {
            let mut to = connect_from(peer, upstream).await;
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut to).await;
        })
        .await;
    // The store as OpenSSL, rustls-native-certs and the platform verifier read it from the
    // environment: a bundle file and a directory, both holding the test's CA.
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("certs dir");
    let bundle = dir.path().join("ca-certificates.crt");
    std::fs::write(&bundle, &ca.pem).expect("bundle");
    std::fs::write(certs.join("corporate-ca.pem"), &ca.pem).expect("cert in dir");
    let host_store = [
        ("SSL_CERT_FILE", bundle.display().to_string()),
        ("SSL_CERT_DIR", certs.display().to_string()),
    ];
    let env = |extra: &[(&str, String)]| {
        let pairs: Vec<(&str, &str)> = host_store
            .iter()
            .chain(extra)
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        with(emu.env(), &pairs)
    };

    let detected = run(
        &["detect"],
        &env(&[
            ("SENDSMS_IP_PROVIDERS", format!("https://{front}/ip#front")),
            ("SENDSMS_IP_QUORUM", "1".into()),
        ]),
    )
    .await;
    report(
        "detection over TLS from a CA in the host's store",
        &detected,
    );
    assert_eq!(detected.code, 3, "{detected:?}");
    assert_says(&detected, &["invalid peer certificate"]);

    let once = run(
        &["once"],
        &env(&[
            ("SENDSMS_API_URL", format!("https://{front}/json")),
            ("SENDSMS_VERIFY_TIMEOUT", "3s".into()),
        ]),
    )
    .await;
    report("the API over TLS from a CA in the host's store", &once);
    assert_eq!(once.code, 5, "{once:?}");
    assert_says(
        &once,
        &["invalid peer certificate", "SENDSMS_EXTRA_CA_FILE"],
    );
    assert_eq!(
        emu.requests(0, "token_list_ips").await,
        (0, 0),
        "no call got through"
    );
    assert_eq!(emu.whitelist(0).await, vec![BASTION], "nothing was written");
    // The control: the same front, its CA named where the sidecar does read it.
    let trusted = run(
        &["check"],
        &env(&[
            ("SENDSMS_API_URL", format!("https://{front}/json")),
            ("SENDSMS_EXTRA_CA_FILE", bundle.display().to_string()),
        ]),
    )
    .await;
    assert_eq!(
        emu.requests(0, "token_list_ips").await,
        (0, 1),
        "read through the front once trusted: {trusted:?}"
    );
}

#[tokio::test]
async fn a_key_file_the_user_cannot_read_names_the_user_and_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    // Running the binary as another user needs root.
    if !require_root() {
        return;
    }
    let emu = Emulator::bastioned(&[]).await;
    // Readable directories, a file only root may read: as a Kubernetes secret with
    // defaultMode 0600 mounted into a container whose USER is not root.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let key_file = dir.path().join("api-key");
    std::fs::write(&key_file, KEY).expect("key file");
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let env = without(
        with(
            emu.env(),
            &[("SENDSMS_API_KEY_FILE", &key_file.display().to_string())],
        ),
        "SENDSMS_API_KEY",
    );
    let mut command = Command::new(binary());
    command
        .arg("once")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .uid(65534)
        .gid(65534);
    let once = exited(
        Watched::spawn("once as nobody", command),
        Duration::from_secs(60),
    )
    .await;
    report("key file unreadable for the container user", &once);
    assert_eq!(once.code, 2, "{once:?}");
    assert_says(
        &once,
        &[
            "SENDSMS_API_KEY_FILE",
            "Permission denied",
            "this process runs as uid 65534",
            "the file is owned by uid 0 (root)",
            "mode 0600",
        ],
    );
}
