//! Test harness: the real binary, an emulator child process, and the no-leak assertion.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_sendsms-whitelister");
/// The secret every test hands the binary; no output may ever contain it.
pub const KEY: &str = "k3y-5ecret-7f1d9c2b";
pub const USERNAME: &str = "tester";

/// An emulator child process on a free loopback port; killed on drop.
pub struct Emulator {
    _child: Child,
    pub addr: SocketAddr,
    pub dns: SocketAddr,
}

impl Emulator {
    /// `extra` are emulator flags; the account, the key and a free port are added here.
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
        let mut child = Command::new(BIN)
            .args(["emulator", "--listen", listen, "--dns-listen", listen])
            .args(["--username", USERNAME, "--default-key", KEY])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn emulator");
        let stdout = child.stdout.take().expect("emulator stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut announced = Vec::new();
        for prefix in ["listening on http://", "dns listening on udp://"] {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
                .await
                .expect("emulator announces its address in time")
                .expect("read emulator stdout")
                .expect("emulator printed a line");
            assert!(!line.contains(KEY), "the emulator printed the key");
            let addr: SocketAddr = line
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("unexpected line: {line}"))
                .parse()
                .expect("address");
            announced.push(addr);
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Emulator {
            _child: child,
            addr: announced[0],
            dns: announced[1],
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn state(&self) -> Value {
        let body = plain_client_builder()
            .build()
            .expect("client")
            .get(self.url("/_emulator/state"))
            .send()
            .await
            .expect("state request")
            .bytes()
            .await
            .expect("state body");
        serde_json::from_slice(&body).expect("state json")
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

    pub async fn whitelist(&self, index: usize) -> Vec<String> {
        let state = self.state().await;
        state["keys"][index]["whitelist"]
            .as_array()
            .expect("whitelist array")
            .iter()
            .map(|v| v.as_str().expect("string").to_owned())
            .collect()
    }

    /// Calls the API as a client bound to `from`, the way another host would.
    pub async fn call_from(&self, from: IpAddr, params: &[(&str, &str)]) -> Value {
        let client = plain_client_builder()
            .local_address(from)
            .no_proxy()
            .build()
            .expect("client");
        let mut url = url::Url::parse(&self.url("/json")).expect("url");
        url.query_pairs_mut().extend_pairs(params);
        let body = client
            .get(url)
            .send()
            .await
            .expect("api call")
            .bytes()
            .await
            .expect("api body");
        serde_json::from_slice(&body).expect("api json")
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
    pub fn env(&self) -> Vec<(String, String)> {
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

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs the binary with exactly `env` (plus PATH), and asserts the key is in no output.
pub async fn run(args: &[&str], env: &[(String, String)]) -> Run {
    let started = Instant::now();
    let output = Command::new(BIN)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run binary");
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: started.elapsed(),
    };
    assert_no_leak(&run);
    run
}

pub fn assert_no_leak(run: &Run) {
    assert!(
        !run.stdout.contains(KEY) && !run.stderr.contains(KEY),
        "the API key leaked into the output:\n{run:?}"
    );
}

/// Replaces or adds variables.
pub fn with(mut env: Vec<(String, String)>, changes: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in changes {
        env.retain(|(key, _)| key != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

pub fn without(mut env: Vec<(String, String)>, name: &str) -> Vec<(String, String)> {
    env.retain(|(k, _)| k != name);
    env
}

/// A tool the test needs: in CI its absence fails the test; elsewhere the test says loudly
/// that it did not run.
pub fn require_tool(name: &str) -> Option<std::path::PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        let message = format!("`{name}` is not installed; .ci/run installs it");
        if std::env::var_os("CI").is_some() {
            panic!("{message}");
        }
        eprintln!("NOT RUN: {message}");
    }
    found
}

/// A free TCP port on loopback (the tiny race with another process taking it is acceptable in tests).
/// A free loopback port below the kernel's ephemeral range, never the same twice in one test
/// binary: a port the kernel handed out could be taken by any outgoing connection (of a fleet
/// of 100 sidecars, say) before the test's listener binds it.
pub fn free_port() -> u16 {
    static NEXT: std::sync::Mutex<u16> = std::sync::Mutex::new(0);
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_100));
    let mut next = NEXT.lock().unwrap_or_else(|p| p.into_inner());
    if *next == 0 {
        // Test binaries running side by side start far apart.
        *next = low + (std::process::id() % u32::from(high - low)) as u16;
    }
    for _ in low..high {
        let port = *next;
        *next = if port + 1 >= high { low } else { port + 1 };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {low} and {high}");
}

pub async fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A tiny HTTP server on `bind` that answers every request with `body` after `delay`: a liar,
/// a slow provider or a garbage source, as a test needs.
pub async fn fixed_http(bind: &str, body: Vec<u8>, delay: Duration) -> SocketAddr {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    raw_server(bind, [head.into_bytes(), body].concat(), delay)
        .await
        .0
}

/// A TCP server that answers every connection with `response` after `delay`, and records
/// everything it was sent: a redirecting API, a fake proxy, a tell-tale for stray traffic.
pub async fn raw_server(
    bind: &str,
    response: Vec<u8>,
    delay: Duration,
) -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .expect("bind raw server");
    let addr = listener.local_addr().expect("addr");
    let recorded = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = std::sync::Arc::clone(&recorded);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let response = response.clone();
            let record = std::sync::Arc::clone(&record);
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let read = stream.read(&mut request).await.unwrap_or(0);
                record
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&request[..read]);
                tokio::time::sleep(delay).await;
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, recorded)
}

/// A `run` sidecar child process with its status port; output is collected for the leak check.
pub struct Sidecar {
    child: Child,
    /// Where the test reaches the status server.
    pub status: SocketAddr,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Sidecar {
    /// `prefix` runs the binary through another command (such as `ip netns exec NS`).
    pub async fn start_with(
        prefix: &[&str],
        env: &[(String, String)],
        listen: SocketAddr,
    ) -> Sidecar {
        let (program, args): (&str, Vec<&str>) = match prefix.split_first() {
            Some((first, rest)) => (first, rest.iter().copied().chain([BIN, "run"]).collect()),
            None => (BIN, vec!["run"]),
        };
        let mut child = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("SENDSMS_LISTEN", listen.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn sidecar");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = std::sync::Arc::clone(&output);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut all = output.lock().unwrap_or_else(|p| p.into_inner());
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        Sidecar {
            child,
            status: listen,
            output,
        }
    }

    pub async fn start(env: &[(String, String)]) -> Sidecar {
        Self::start_with(&[], env, ([127, 0, 0, 1], free_port()).into()).await
    }

    pub fn output(&self) -> String {
        let output = self
            .output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        assert!(
            !output.contains(KEY),
            "the API key leaked into the sidecar's output:\n{output}"
        );
        output
    }

    pub async fn request(&self, method: reqwest::Method, path: &str) -> (u16, String) {
        let client = plain_client_builder().no_proxy().build().expect("client");
        match client
            .request(method, format!("http://{}{path}", self.status))
            .timeout(Duration::from_secs(30))
            .send()
            .await
        {
            Ok(response) => {
                let code = response.status().as_u16();
                let body = response.text().await.unwrap_or_default();
                assert!(!body.contains(KEY), "{path} leaked the key");
                (code, body)
            }
            Err(e) => (0, e.to_string()),
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        self.request(reqwest::Method::GET, path).await
    }

    pub async fn ready(&self) -> bool {
        self.get("/readyz").await.0 == 200
    }

    /// Waits until /readyz answers `want` (200 or 503), or panics after `within`.
    pub async fn wait_readyz(&self, want: u16, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let (code, body) = self.get("/readyz").await;
            if code == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {code} ({body}) instead of {want}; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM; returns the exit code and how long the exit took.
    pub async fn terminate(mut self) -> (i32, Duration) {
        let pid = self.child.id().expect("running");
        let started = Instant::now();
        let killed = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill");
        assert!(killed.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exits after SIGTERM")
            .expect("wait");
        let _ = self.output();
        (status.code().unwrap_or(-1), started.elapsed())
    }
}

/// Total sendSMS requests the emulator saw for key 0 (accepted and refused, every action).
pub async fn api_requests(emu: &Emulator) -> u64 {
    let state = emu.state().await;
    state["keys"][0]["requests"]
        .as_object()
        .map(|actions| {
            actions
                .values()
                .map(|c| c["accepted"].as_u64().unwrap_or(0) + c["refused"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

impl Sidecar {
    /// The process id, to read its memory or signal it.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// SIGKILL: no clean-up at all, as when a node dies.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    pub async fn status(&self) -> Value {
        let (code, body) = self.get("/status").await;
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("/status {code}: {body}"))
    }
}

/// A `redis-server` child on a loopback port, without persistence; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
}

impl RedisServer {
    /// None (after `require_tool` said so) when redis-server is missing outside CI.
    pub async fn start() -> Option<RedisServer> {
        require_tool("redis-server")?;
        let mut server = RedisServer {
            child: None,
            port: free_port(),
        };
        server.restart().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's process id, to stop and continue it.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).expect("running")
    }

    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// On the same port, empty, as after a crash of a server without persistence.
    pub async fn restart(&mut self) {
        self.stop().await;
        let port = self.port.to_string();
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        wait_for_port(([127, 0, 0, 1], self.port).into()).await;
    }
}

/// An echo provider whose answer the test changes: an egress IP change without a network.
pub struct SwitchableEcho {
    pub addr: SocketAddr,
    answer: std::sync::Arc<std::sync::Mutex<String>>,
}

impl SwitchableEcho {
    pub async fn start(ip: &str) -> SwitchableEcho {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        let answer = std::sync::Arc::new(std::sync::Mutex::new(ip.to_owned()));
        let shared = std::sync::Arc::clone(&answer);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut stream, _)) = listener.accept().await {
                let ip = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut request).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{ip}",
                        ip.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        SwitchableEcho { addr, answer }
    }

    pub fn switch_to(&self, ip: &str) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = ip.to_owned();
    }
}

/// `reqwest::Client::builder()`, after the crypto provider the binary uses is installed.
pub fn plain_client_builder() -> reqwest::ClientBuilder {
    // reqwest panics without a process-wide provider; the binary installs ring, and so do we.
    // An error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}
