//! `run`, the sidecar, as a child process, and its status server as a test sees it: every
//! answer body goes through the leak check.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::binary::command;
use crate::child::{Exited, Watched};
use crate::http::http_client;
use crate::secrets::assert_clean;
use crate::tools::free_port;

/// How long one status request may take: the sidecar answers at once, except a recheck, which
/// waits for a round.
const REQUEST_LIMIT: Duration = Duration::from_secs(30);

/// A client for one sidecar's status server; clones share a connection pool, so concurrent
/// requests from tasks of their own are cheap. Every body it receives is checked for secrets.
#[derive(Clone)]
pub struct StatusClient {
    client: reqwest::Client,
    /// Where the status server is reached.
    pub addr: SocketAddr,
}

impl StatusClient {
    pub fn new(addr: SocketAddr) -> StatusClient {
        StatusClient {
            client: http_client().build().expect("client"),
            addr,
        }
    }

    /// The code and body, or the transport error's text when no answer came within `limit`.
    pub async fn request_within(
        &self,
        method: Method,
        path: &str,
        limit: Duration,
    ) -> Result<(u16, String), String> {
        let response = self
            .client
            .request(method, format!("http://{}{path}", self.addr))
            .timeout(limit)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let code = response.status().as_u16();
        let body = response.text().await.map_err(|e| e.to_string())?;
        assert_clean(&format!("the sidecar's {path}"), &body);
        Ok((code, body))
    }

    /// The code and body; code 0 and the error's text when nothing answered.
    pub async fn request(&self, method: Method, path: &str) -> (u16, String) {
        self.request_within(method, path, REQUEST_LIMIT)
            .await
            .unwrap_or_else(|error| (0, error))
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        self.request(Method::GET, path).await
    }
}

/// Counter `name` in a `/status` answer; panics when it is missing.
pub fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {status}"))
}

/// A `run` sidecar child process with its status server.
pub struct Sidecar {
    child: Watched,
    /// Where the test reaches the status server (a network test moves it with the address).
    pub status: SocketAddr,
}

impl Sidecar {
    /// `prefix` runs the binary through another command (such as `ip netns exec NS`); the
    /// status server listens on `listen`.
    pub async fn start_with(
        prefix: &[&str],
        env: &[(String, String)],
        listen: SocketAddr,
    ) -> Sidecar {
        let mut command = command(prefix, &["run"], env);
        command.env("SENDSMS_LISTEN", listen.to_string());
        Sidecar {
            child: Watched::spawn(format!("sidecar on {listen}"), command),
            status: listen,
        }
    }

    /// On loopback, on a free port.
    pub async fn start(env: &[(String, String)]) -> Sidecar {
        Self::start_with(&[], env, ([127, 0, 0, 1], free_port()).into()).await
    }

    /// The process id while it runs, to read its memory (`/proc/PID/status`).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the sidecar is running")
    }

    /// A client for the status server where it is now.
    pub fn client(&self) -> StatusClient {
        StatusClient::new(self.status)
    }

    /// Standard output and error so far, checked for secrets.
    pub fn output(&self) -> String {
        self.child.output()
    }

    /// Waits until the output holds `needle` (a log line written before some state the test
    /// observed may still be in the pipe).
    pub async fn wait_for_log(&self, needle: &str, within: Duration) -> String {
        self.child
            .wait_for_output(&format!("{needle:?}"), within, |text| text.contains(needle))
            .await
    }

    pub async fn request(&self, method: Method, path: &str) -> (u16, String) {
        self.client().request(method, path).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        self.request(Method::GET, path).await
    }

    pub async fn ready(&self) -> bool {
        self.get("/readyz").await.0 == 200
    }

    /// `/status` as JSON. A sidecar just started may not listen yet (a loaded machine starts it
    /// slowly): a refused connection is tried again for up to 10 s before it fails the test.
    pub async fn status(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (code, body) = self.get("/status").await;
            if code == 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
            return serde_json::from_str(&body)
                .unwrap_or_else(|_| panic!("/status {code}: {body}"));
        }
    }

    /// Waits until `/status` satisfies `done` and returns it, or panics after `within`.
    pub async fn wait_status(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status().await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "/status never showed {what} within {within:?}: {status}
output:
{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// One of `/status`'s `counters`.
    pub async fn counter(&self, name: &str) -> u64 {
        counter(&self.status().await, name)
    }

    /// Waits until `/status` counts at least `at_least` for counter `name`; returns the status.
    pub async fn wait_counter(&self, name: &str, at_least: u64, within: Duration) -> Value {
        self.wait_status(&format!("{name} >= {at_least}"), within, |status| {
            counter(status, name) >= at_least
        })
        .await
    }

    /// Waits until /readyz answers `want` (200 or 503) and returns its reason, or panics after
    /// `within`.
    pub async fn wait_readyz(&self, want: u16, within: Duration) -> String {
        self.wait_readyz_for(want, within, |_| true).await
    }

    /// Waits until /readyz answers `want` with a reason `reason_ok` accepts; returns the reason.
    pub async fn wait_readyz_for(
        &self,
        want: u16,
        within: Duration,
        reason_ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + within;
        let client = self.client();
        loop {
            let (code, body) = client.get("/readyz").await;
            if code == want && reason_ok(body.trim_end()) {
                return body.trim_end().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "/readyz stayed {code} ({body}) instead of {want}; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGTERM; the exit code, how long the exit took, and the whole output (checked).
    pub async fn terminate(mut self) -> Exited {
        self.child.signal("TERM", Duration::from_secs(10)).await
    }

    /// SIGKILL: no clean-up at all, as when a node dies.
    pub async fn kill(&mut self) -> Exited {
        self.child.kill().await
    }
}
