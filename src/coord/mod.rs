//! Fleet coordination: members behind one egress IP share one whitelist write and one API budget through a store.

mod file_store;
mod redis_store;

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::config::{Config, Coordination, Credentials};
use crate::reconcile::{ReconcileError, Reconciler, Report};
use crate::sendsms::CallObserver;
use crate::state::unix_now_ms;

/// A member's proof of one IP, shared with the fleet: the IP works for the key from the fleet's
/// egress, as `by` verified at `verified_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub ip: IpAddr,
    /// Unix milliseconds.
    pub verified_at_ms: u64,
    pub by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("coordination store {store}: {problem}")]
    Unavailable { store: String, problem: String },
}

/// Where every key lives: one account, one API key (by a one-way fingerprint, never the key
/// itself), so fleets of different accounts or keys can share a store without meeting.
#[derive(Clone, Debug)]
pub struct Scope {
    pub username: String,
    pub fingerprint: String,
}

impl Scope {
    pub fn of(credentials: &Credentials) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"sendsms-whitelister/key-fingerprint/v1\0");
        hash.update(credentials.username.as_bytes());
        hash.update(b"\0");
        hash.update(credentials.api_key.expose_secret().as_bytes());
        let digest = hash.finalize();
        Scope {
            username: credentials.username.clone(),
            fingerprint: digest[..8].iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// The operations the protocol needs; each backend makes them atomic its own way.
enum Store {
    File(file_store::FileStore),
    Redis(Box<redis_store::RedisStore>),
}

impl Store {
    async fn read_verified(&self, ip: IpAddr) -> Result<Option<Record>, StoreError> {
        match self {
            Store::File(s) => s.read_verified(ip).await,
            Store::Redis(s) => s.read_verified(ip).await,
        }
    }

    async fn write_verified(&self, record: &Record, ttl: Duration) -> Result<(), StoreError> {
        match self {
            Store::File(s) => s.write_verified(record, ttl).await,
            Store::Redis(s) => s.write_verified(record, ttl).await,
        }
    }

    /// None when the lease is now `member`'s; otherwise who holds it.
    async fn try_lease(
        &self,
        ip: IpAddr,
        member: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        match self {
            Store::File(s) => s.try_lease(ip, member, ttl).await,
            Store::Redis(s) => s.try_lease(ip, member, ttl).await,
        }
    }

    /// False when the lease is no longer `member`'s.
    async fn renew_lease(
        &self,
        ip: IpAddr,
        member: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::File(s) => s.renew_lease(ip, member, ttl).await,
            Store::Redis(s) => s.renew_lease(ip, member, ttl).await,
        }
    }

    async fn release_lease(&self, ip: IpAddr, member: &str) -> Result<(), StoreError> {
        match self {
            Store::File(s) => s.release_lease(ip, member).await,
            Store::Redis(s) => s.release_lease(ip, member).await,
        }
    }

    /// Books one call in the fleet's sliding window, or says how long until one fits.
    async fn take_budget(
        &self,
        limit: u32,
        window: Duration,
        token: &str,
    ) -> Result<Option<Duration>, StoreError> {
        match self {
            Store::File(s) => s.take_budget(limit, window, token).await,
            Store::Redis(s) => s.take_budget(limit, window, token).await,
        }
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::File(s) => s.ping().await,
            Store::Redis(s) => s.ping().await,
        }
    }
}

/// Counters and gauges the metrics registry exposes; clones share their values.
#[derive(Clone, Default)]
pub struct CoordinationMetrics {
    pub store_up: Gauge,
    pub records_read: Counter,
    pub records_written: Counter,
    pub leases_taken: Counter,
    pub fallbacks: Counter,
}

/// What `/status` shows of coordination.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CoordinationStatus {
    pub mode: &'static str,
    /// The store, without any password.
    pub store: String,
    pub member: String,
    pub store_up: bool,
    pub store_error: Option<String>,
    /// Who held the whitelist lease when this member last looked.
    pub lease_holder: Option<String>,
    /// Fresh records found: readiness without any sendSMS call.
    pub records_read: u64,
    pub records_written: u64,
    pub leases_taken: u64,
    /// Times this member acted alone because the store failed.
    pub fallbacks: u64,
}

/// How an `ensure` ended well.
#[derive(Clone, Debug)]
pub enum Proof {
    /// This member proved it (as leader, or alone while the store was down).
    Own(Report),
    /// Another member proved it for the same egress IP.
    Peer(Record),
}

impl std::fmt::Display for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Proof::Own(report) => write!(f, "{report}"),
            Proof::Peer(record) => write!(
                f,
                "{} was verified by fleet member {} at {}; nothing written",
                record.ip,
                record.by,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_millis(record.verified_at_ms)
                )
            ),
        }
    }
}

/// The fleet's API budget for a command without a sidecar's accounting (`once`).
pub struct FleetBudget {
    pub coordinator: Arc<Coordinator>,
    pub per_minute: u32,
}

impl CallObserver for FleetBudget {
    fn before_call(
        &self,
        _action: &'static str,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.coordinator.acquire_budget(self.per_minute))
    }
}

pub struct Coordinator {
    store: Store,
    member: String,
    lease_ttl: Duration,
    record_ttl: Duration,
    /// Waiting for a leader gives up after this; the caller retries later.
    wait_limit: Duration,
    status: Mutex<CoordinationStatus>,
    metrics: CoordinationMetrics,
    /// The IP whose lease this member holds right now, so a shutdown can hand it back.
    holding: Mutex<Option<IpAddr>>,
}

const POLL_MIN: Duration = Duration::from_millis(100);
const POLL_MAX: Duration = Duration::from_secs(2);
const STORE_TIMEOUT: Duration = Duration::from_secs(3);

impl Coordinator {
    /// None for `SENDSMS_COORDINATION=none`. Nothing is contacted yet: a store that is down at
    /// start is an outage like any other, not a reason to refuse to start.
    pub fn from_config(
        config: &Config,
        metrics: CoordinationMetrics,
    ) -> Result<Option<Arc<Self>>, StoreError> {
        let scope = Scope::of(&config.credentials);
        let (store, shown) = match &config.coordination {
            Coordination::None => return Ok(None),
            Coordination::File(dir) => (
                Store::File(file_store::FileStore::new(dir.clone(), &scope)),
                format!("file:{}", dir.display()),
            ),
            Coordination::Redis(url) => (
                Store::Redis(Box::new(redis_store::RedisStore::new(
                    url,
                    &scope,
                    STORE_TIMEOUT,
                )?)),
                url.to_string(),
            ),
        };
        let member = member_name();
        metrics.store_up.set(1);
        Ok(Some(Arc::new(Coordinator {
            store,
            lease_ttl: config.coordination_lease,
            record_ttl: config.reverify_interval,
            wait_limit: config.verify_timeout + config.coordination_lease * 2,
            status: Mutex::new(CoordinationStatus {
                mode: config.coordination.mode(),
                store: shown,
                member: member.clone(),
                store_up: true,
                ..CoordinationStatus::default()
            }),
            member,
            metrics,
            holding: Mutex::new(None),
        })))
    }

    fn lock(&self) -> MutexGuard<'_, CoordinationStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> CoordinationStatus {
        self.lock().clone()
    }

    /// The longest `ensure` may wait for another member before giving up.
    pub fn wait_limit(&self) -> Duration {
        self.wait_limit
    }

    pub fn store_up(&self) -> bool {
        self.lock().store_up
    }

    /// Every store answer says whether the store is up; the first failure and the recovery are logged.
    fn observe<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        let mut status = self.lock();
        match &result {
            Ok(_) if !status.store_up => {
                tracing::info!(store = %status.store, "coordination store reachable again; coordinating");
                status.store_up = true;
                status.store_error = None;
                self.metrics.store_up.set(1);
            }
            Ok(_) => {}
            Err(e) => {
                if status.store_up {
                    tracing::warn!(error = %e, "coordination store unreachable; acting alone under the local API budget");
                }
                status.store_up = false;
                status.store_error = Some(e.to_string());
                self.metrics.store_up.set(0);
            }
        }
        result
    }

    /// Checks a store that was down, so `/status` shows the recovery without waiting for an IP change.
    pub async fn ping(&self) {
        let _ = self.observe(self.store.ping().await);
    }

    /// The fleet's share of `SENDSMS_API_BUDGET`: waits until the fleet-wide window has room.
    /// A store failure lets the call through; the member's local budget still holds it.
    pub async fn acquire_budget(&self, limit: u32) {
        let token = format!("{}/{}", self.member, rand::random::<u64>());
        loop {
            match self.observe(
                self.store
                    .take_budget(limit, Duration::from_secs(60), &token)
                    .await,
            ) {
                Ok(None) | Err(_) => return,
                Ok(Some(wait)) => {
                    tracing::debug!(?wait, "fleet API budget spent; waiting");
                    tokio::time::sleep(wait.clamp(Duration::from_millis(50), POLL_MAX * 5)).await;
                }
            }
        }
    }

    /// Makes `ip` whitelisted and verified for the fleet: a fresh record from another member is
    /// enough; otherwise one member at a time, the lease holder, runs `ensure` and shares the
    /// record. `not_before_ms` refuses records older than that (a forced recheck wants news).
    pub async fn ensure(
        &self,
        ip: IpAddr,
        reconciler: &Reconciler,
        not_before_ms: u64,
    ) -> Result<Proof, ReconcileError> {
        let started = Instant::now();
        let mut poll = POLL_MIN;
        loop {
            match self.fresh_record(ip, not_before_ms).await {
                Ok(Some(record)) => return Ok(Proof::Peer(record)),
                Ok(None) => {}
                Err(_) => return self.alone(ip, reconciler).await,
            }
            match self.observe(self.store.try_lease(ip, &self.member, self.lease_ttl).await) {
                Ok(None) => {
                    // The previous holder may have written its record and let go between our
                    // read and our lease: look again before spending any call.
                    if let Ok(Some(record)) = self.fresh_record(ip, not_before_ms).await {
                        self.release(ip).await;
                        return Ok(Proof::Peer(record));
                    }
                    return self.lead(ip, reconciler).await;
                }
                Ok(Some(holder)) => {
                    if self.lock().lease_holder.as_ref() != Some(&holder) {
                        tracing::info!(%ip, %holder, "another member is whitelisting; waiting for its record");
                    }
                    self.lock().lease_holder = Some(holder);
                }
                Err(_) => return self.alone(ip, reconciler).await,
            }
            if started.elapsed() >= self.wait_limit {
                return Err(ReconcileError::PeerBusy {
                    ip,
                    holder: self.lock().lease_holder.clone().unwrap_or_default(),
                    waited: started.elapsed(),
                });
            }
            tokio::time::sleep(jitter(poll)).await;
            poll = (poll * 2).min(POLL_MAX);
        }
    }

    /// A record for `ip` written at or after `not_before_ms`, counted when found.
    async fn fresh_record(
        &self,
        ip: IpAddr,
        not_before_ms: u64,
    ) -> Result<Option<Record>, StoreError> {
        let record = self
            .observe(self.store.read_verified(ip).await)?
            .filter(|r| r.ip == ip && r.verified_at_ms >= not_before_ms);
        if let Some(record) = &record {
            self.metrics.records_read.inc();
            self.lock().records_read += 1;
            tracing::info!(%ip, by = %record.by, "verified by another member of the fleet");
        }
        Ok(record)
    }

    /// The store failed: today's uncoordinated behaviour, under the local budget.
    async fn alone(&self, ip: IpAddr, reconciler: &Reconciler) -> Result<Proof, ReconcileError> {
        self.metrics.fallbacks.inc();
        self.lock().fallbacks += 1;
        reconciler.ensure(ip).await.map(Proof::Own)
    }

    async fn lead(&self, ip: IpAddr, reconciler: &Reconciler) -> Result<Proof, ReconcileError> {
        self.metrics.leases_taken.inc();
        {
            let mut status = self.lock();
            status.leases_taken += 1;
            status.lease_holder = Some(self.member.clone());
        }
        tracing::info!(%ip, member = %self.member, "took the whitelist lease");
        *self.holding.lock().unwrap_or_else(|p| p.into_inner()) = Some(ip);
        let ensure = reconciler.ensure(ip);
        tokio::pin!(ensure);
        let result = loop {
            tokio::select! {
                result = &mut ensure => break result,
                () = tokio::time::sleep(self.lease_ttl / 3) => self.renew(ip).await,
            }
        };
        if result.is_ok() {
            let record = Record {
                ip,
                verified_at_ms: unix_now_ms(),
                by: self.member.clone(),
            };
            // The record goes in before the lease goes away, so no waiter takes a lease for
            // an IP that is already proven.
            if self
                .observe(self.store.write_verified(&record, self.record_ttl).await)
                .is_ok()
            {
                self.metrics.records_written.inc();
                self.lock().records_written += 1;
            }
        }
        self.release(ip).await;
        result.map(Proof::Own)
    }
}

impl Coordinator {
    async fn release(&self, ip: IpAddr) {
        let _ = self.observe(self.store.release_lease(ip, &self.member).await);
        *self.holding.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// On shutdown: a lease held mid-work goes back at once, so the next member need not wait
    /// for it to expire (a rolling update stops the holder as often as any other member).
    pub async fn hand_back(&self) {
        let held = *self.holding.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ip) = held {
            tracing::info!(%ip, "handing the whitelist lease back");
            self.release(ip).await;
        }
    }

    async fn renew(&self, ip: IpAddr) {
        if let Ok(false) = self.observe(
            self.store
                .renew_lease(ip, &self.member, self.lease_ttl)
                .await,
        ) {
            // Another member may now run the same add: a duplicate write, not harm.
            tracing::warn!(%ip, "the whitelist lease expired while this member held it");
        }
    }
}

/// A store's time to live in milliseconds; never 0, which Redis refuses and which would expire
/// a file record at once.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Names this member in records and leases: the pod or host name and the process id.
fn member_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown-host".into());
    format!("{host}/{}", std::process::id())
}

/// Waiters spread out, so a fleet that started together does not poll in step.
fn jitter(delay: Duration) -> Duration {
    delay.mul_f64(0.5 + rand::random::<f64>())
}

/// What every store must do, checked against each backend by its own tests.
#[cfg(test)]
async fn assert_store_contract(store: Store) {
    let ip: IpAddr = "203.0.113.7".parse().expect("ip");
    let ttl = Duration::from_secs(30);
    assert_eq!(store.try_lease(ip, "a", ttl).await.expect("lease"), None);
    assert_eq!(
        store.try_lease(ip, "a", ttl).await.expect("lease"),
        None,
        "re-entrant"
    );
    assert_eq!(
        store.try_lease(ip, "b", ttl).await.expect("lease"),
        Some("a".into())
    );
    assert!(!store.renew_lease(ip, "b", ttl).await.expect("renew"));
    assert!(store.renew_lease(ip, "a", ttl).await.expect("renew"));
    store.release_lease(ip, "b").await.expect("release");
    assert_eq!(
        store.try_lease(ip, "b", ttl).await.expect("lease"),
        Some("a".into()),
        "only the holder releases"
    );
    store.release_lease(ip, "a").await.expect("release");
    assert_eq!(store.try_lease(ip, "b", ttl).await.expect("lease"), None);

    assert_eq!(store.read_verified(ip).await.expect("read"), None);
    let record = Record {
        ip,
        verified_at_ms: unix_now_ms(),
        by: "b".into(),
    };
    store.write_verified(&record, ttl).await.expect("write");
    assert_eq!(
        store.read_verified(ip).await.expect("read"),
        Some(record.clone())
    );
    store
        .write_verified(&record, Duration::from_millis(5))
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.read_verified(ip).await.expect("read"),
        None,
        "expired"
    );

    let window = Duration::from_secs(60);
    assert_eq!(
        store.take_budget(2, window, "t1").await.expect("budget"),
        None
    );
    assert_eq!(
        store.take_budget(2, window, "t2").await.expect("budget"),
        None
    );
    let wait = store.take_budget(2, window, "t3").await.expect("budget");
    assert!(
        wait.is_some_and(|w| w > Duration::from_secs(50)),
        "{wait:?}"
    );
    let short = Duration::from_millis(200);
    let other: IpAddr = "203.0.113.8".parse().expect("ip");
    assert_eq!(
        store.try_lease(other, "c", short).await.expect("lease"),
        None
    );
    tokio::time::sleep(short + Duration::from_millis(50)).await;
    assert_eq!(
        store.try_lease(other, "d", ttl).await.expect("lease"),
        None,
        "an expired lease is free"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn credentials(user: &str, key: &str) -> Credentials {
        Credentials {
            username: user.into(),
            api_key: SecretString::from(key.to_owned()),
        }
    }

    #[test]
    fn the_fingerprint_is_stable_one_way_and_scoped_by_account() {
        let a = Scope::of(&credentials("alice", "secret-key-1"));
        assert_eq!(
            a.fingerprint,
            Scope::of(&credentials("alice", "secret-key-1")).fingerprint
        );
        assert_eq!(a.fingerprint.len(), 16);
        assert!(!a.fingerprint.contains("secret"));
        assert_ne!(
            a.fingerprint,
            Scope::of(&credentials("alice", "secret-key-2")).fingerprint
        );
        assert_ne!(
            a.fingerprint,
            Scope::of(&credentials("bob", "secret-key-1")).fingerprint
        );
    }
}
