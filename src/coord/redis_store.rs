//! The `redis://` coordination store: members anywhere share a Redis server; each step is one atomic command or script.

use std::net::IpAddr;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Script};
use std::sync::Mutex;

use super::{Record, Scope, StoreError, millis};
use crate::secret::{SecretUrl, redact};
use crate::util::lock;

/// Takes the lease if it is free (or already ours) and answers "" ; else answers the holder.
const TRY_LEASE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return '' end
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return '' end
return holder or ''
";

/// Only the holder extends or drops its lease: a lease that expired and went to another member
/// is never touched.
const RENEW_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
";
const RELEASE_LEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// A sliding-window log on the server's clock: 0 when a call is booked, else milliseconds
/// until the oldest booking leaves the window. Bookings from the future (the server's clock
/// stepped back, or a forged entry) are dropped: they would block the window for as long as
/// they claim.
const TAKE_BUDGET: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return math.max(1, tonumber(oldest[2]) + window - now)
";

pub(crate) struct RedisStore {
    client: redis::Client,
    shown: String,
    prefix: String,
    timeout: Duration,
    /// Dropped after any failure, so the next operation connects afresh. Only ever locked to
    /// copy or replace the handle, never across a connect or a command: a stalled server
    /// must not make one operation wait for another.
    connection: Mutex<Option<MultiplexedConnection>>,
    try_lease: Script,
    renew_lease: Script,
    release_lease: Script,
    take_budget: Script,
}

impl RedisStore {
    pub(crate) fn new(
        url: &SecretUrl,
        scope: &Scope,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let shown = url.to_string();
        let opened = if url.expose().starts_with("rediss:") {
            // The binary's own roots, as for every other TLS client: not the host's store.
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(crate::http::builtin_roots_pem().to_vec()),
            };
            redis::Client::build_with_tls(url.expose(), certificates)
        } else {
            redis::Client::open(url.expose())
        };
        let client = opened.map_err(|e| StoreError::Unavailable {
            store: shown.clone(),
            // The URL is not repeated: it may hold a password.
            problem: format!("unusable Redis URL ({:?})", e.kind()),
        })?;
        Ok(RedisStore {
            client,
            shown,
            prefix: format!(
                "sendsms-whitelister:{}:{}",
                scope.username, scope.fingerprint
            ),
            timeout,
            connection: Mutex::new(None),
            try_lease: Script::new(TRY_LEASE),
            renew_lease: Script::new(RENEW_LEASE),
            release_lease: Script::new(RELEASE_LEASE),
            take_budget: Script::new(TAKE_BUDGET),
        })
    }

    fn key(&self, what: &str, ip: IpAddr) -> String {
        format!("{}:{what}:{ip}", self.prefix)
    }

    fn fail(&self, problem: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            store: self.shown.clone(),
            problem: redact(&problem.to_string(), &[]),
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        if let Some(connection) = lock(&self.connection).as_ref() {
            return Ok(connection.clone());
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.fail(e))?;
        // Two operations may have connected at once; the first connection kept is shared.
        Ok(lock(&self.connection)
            .get_or_insert_with(|| connection)
            .clone())
    }

    /// One command or script on the shared connection, connect included, within the store's
    /// timeout; a failure forgets the connection.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let attempt = async {
            let mut connection = self.connection().await?;
            invocation(&mut connection).await.map_err(|e| self.fail(e))
        };
        let result = tokio::time::timeout(self.timeout * 2, attempt)
            .await
            .unwrap_or_else(|_| Err(self.fail("no answer in time")));
        if result.is_err() {
            *lock(&self.connection) = None;
        }
        result
    }

    pub(crate) async fn read_verified(&self, ip: IpAddr) -> Result<Option<Record>, StoreError> {
        let key = self.key("verified", ip);
        let text: Option<String> = self
            .run(async |c| redis::cmd("GET").arg(&key).query_async(c).await)
            .await?;
        // Something unreadable under our key is treated as absent and overwritten in time.
        Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
    }

    pub(crate) async fn write_verified(
        &self,
        record: &Record,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = self.key("verified", record.ip);
        let body = serde_json::to_string(record).map_err(|e| self.fail(e))?;
        self.run(async |c| {
            redis::cmd("SET")
                .arg(&key)
                .arg(&body)
                .arg("PX")
                .arg(millis(ttl))
                .query_async::<()>(c)
                .await
        })
        .await
    }

    pub(crate) async fn try_lease(
        &self,
        ip: IpAddr,
        member: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let holder: String = self.lease_script(&self.try_lease, ip, member, ttl).await?;
        Ok((!holder.is_empty()).then_some(holder))
    }

    pub(crate) async fn renew_lease(
        &self,
        ip: IpAddr,
        member: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let renewed: i64 = self
            .lease_script(&self.renew_lease, ip, member, ttl)
            .await?;
        Ok(renewed == 1)
    }

    /// A lease script: the lease key, then the member and the time to live as arguments.
    async fn lease_script<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        ip: IpAddr,
        member: &str,
        ttl: Duration,
    ) -> Result<T, StoreError> {
        let key = self.key("lease", ip);
        self.run(async |c| {
            script
                .key(&key)
                .arg(member)
                .arg(millis(ttl))
                .invoke_async(c)
                .await
        })
        .await
    }

    pub(crate) async fn release_lease(&self, ip: IpAddr, member: &str) -> Result<(), StoreError> {
        let key = self.key("lease", ip);
        self.run(async |c| {
            self.release_lease
                .key(&key)
                .arg(member)
                .invoke_async::<i64>(c)
                .await
        })
        .await
        .map(drop)
    }

    pub(crate) async fn take_budget(
        &self,
        limit: u32,
        window: Duration,
        token: &str,
    ) -> Result<Option<Duration>, StoreError> {
        let key = format!("{}:budget", self.prefix);
        let wait_ms: u64 = self
            .run(async |c| {
                self.take_budget
                    .key(&key)
                    .arg(limit.max(1))
                    .arg(millis(window))
                    .arg(token)
                    .invoke_async(c)
                    .await
            })
            .await?;
        Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.run(async |c| redis::cmd("PING").query_async::<()>(c).await)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_store_is_built_with_the_binarys_own_roots() {
        let scope = Scope {
            username: "alice".into(),
            fingerprint: "0123".into(),
        };
        let url = crate::secret::SecretUrl::new("rediss://:pw@cache.internal:6380/0".into());
        // Building connects to nothing; it only needs the roots to parse.
        assert!(RedisStore::new(&url, &scope, Duration::from_secs(3)).is_ok());
    }

    /// A redis-server child that ends with the test, also when the test fails (a panicking
    /// test, as under a mutant, would otherwise leave it running, holding the test's stderr).
    struct Server(std::process::Child);

    impl Server {
        fn id(&self) -> u32 {
            self.0.id()
        }

        fn kill(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// A throwaway redis-server on a free port; None (said loudly) where it is not installed,
    /// a failure in CI.
    fn redis_server() -> Option<(Server, u16)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()?;
        match std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => Some((Server(child), port)),
            Err(e) => {
                assert!(std::env::var_os("CI").is_none(), "redis-server: {e}");
                eprintln!("NOT RUN: redis-server is not installed ({e})");
                None
            }
        }
    }

    /// A store on the redis-server at `port`, once that answers.
    async fn started(port: u16, timeout: Duration) -> (crate::secret::SecretUrl, RedisStore) {
        let url = crate::secret::SecretUrl::new(format!("redis://127.0.0.1:{port}/0"));
        let scope = Scope {
            username: "alice".into(),
            fingerprint: "0123".into(),
        };
        let store = RedisStore::new(&url, &scope, timeout).expect("store");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.ping().await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (url, store)
    }

    fn signal(pid: u32, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill {signal}");
    }

    #[tokio::test]
    async fn a_store_that_answers_within_its_timeout_is_up() {
        let Some((mut server, port)) = redis_server() else {
            return;
        };
        let timeout = Duration::from_millis(1500);
        let (_, store) = started(port, timeout).await;
        // Stopped for 1 s: slower than half the timeout, well within it.
        let pid = server.id();
        signal(pid, "-STOP");
        let resumed = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(1));
            signal(pid, "-CONT");
        });
        let asked = std::time::Instant::now();
        let answer = store.ping().await;
        let waited = asked.elapsed();
        let _ = resumed.join();
        server.kill();
        answer.expect("answered within the timeout");
        assert!(waited >= Duration::from_millis(900), "{waited:?}");
    }

    #[tokio::test]
    async fn the_proof_is_shared_after_the_work_even_when_the_store_stalls_for_two_seconds() {
        let Some((server, port)) = redis_server() else {
            return;
        };
        let (url, _) = started(port, Duration::from_secs(3)).await;
        let flow = crate::testing::flow_settings(Duration::from_secs(60));
        let settings = super::super::Settings {
            mode: super::super::Mode::Redis(url),
            ..flow.coordination
        };
        let member = super::super::Coordinator::new(
            &settings,
            &flow.credentials,
            None,
            std::sync::Arc::default(),
        )
        .expect("store")
        .expect("coordinated");
        let ip: IpAddr = "203.0.113.9".parse().expect("ip");
        let pid = server.id();
        let work = async move {
            // The store stops answering as the work ends: sharing the proof waits 2 s for it,
            // within the store's 3 s timeout and the time set aside for sharing and letting go.
            signal(pid, "-STOP");
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_secs(2));
                signal(pid, "-CONT");
            });
            Ok::<(), ()>(())
        };
        assert!(matches!(
            member.ensure(ip, 0, work).await,
            super::super::Coordinated::Own(Ok(()))
        ));
        // Known to be shared: a write cut off at its deadline may still land once the store
        // resumes, but the member would count it as not shared.
        assert_eq!(member.status().records_written, 1, "the proof is shared");
        assert!(
            member
                .store
                .read_verified(ip)
                .await
                .expect("read")
                .is_some(),
            "the fleet finds the proof"
        );
    }

    #[tokio::test]
    async fn keeps_the_store_contract_with_a_budget_scoped_per_key() {
        let Some((mut server, port)) = redis_server() else {
            return;
        };
        let scope = Scope {
            username: "alice".into(),
            fingerprint: "0123".into(),
        };
        let (url, store) = started(port, Duration::from_secs(3)).await;
        super::super::contract::assert_store_contract(super::super::Store::Redis(Box::new(
            RedisStore::new(&url, &scope, Duration::from_secs(3)).expect("store"),
        )))
        .await;

        let short = Duration::from_millis(200);
        let other = Scope {
            username: "bob".into(),
            fingerprint: "4567".into(),
        };
        let bob = RedisStore::new(&url, &other, Duration::from_secs(3)).expect("store");
        assert_eq!(
            bob.take_budget(1, short, "t").await.expect("budget"),
            None,
            "scoped"
        );
        assert!(
            bob.take_budget(1, short, "u")
                .await
                .expect("budget")
                .is_some()
        );
        tokio::time::sleep(short).await;
        assert_eq!(
            bob.take_budget(1, short, "v").await.expect("budget"),
            None,
            "slides"
        );

        server.kill();
        assert!(
            store.ping().await.is_err(),
            "a dead server is an error, not a hang"
        );
    }
}
