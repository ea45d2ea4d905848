//! Fleet coordination: members behind one egress IP share one whitelist write and one API budget through a store.

mod file_store;
mod redis_store;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::metrics::CoordinationMetrics;
use crate::secret::{Credentials, SecretUrl, printable};
use crate::util::backoff::Backoff;
use crate::util::clock::unix_now_ms;
use crate::util::waits::Waits;
use crate::util::{deadline, lock};

/// Where fleet members share whitelist records, leases and the API budget (`SENDSMS_COORDINATION`).
#[derive(Clone, Debug, Default)]
pub(crate) enum Mode {
    #[default]
    None,
    /// Members on one host share a directory.
    File(PathBuf),
    /// Members anywhere share a Redis server.
    Redis(SecretUrl),
}

impl Mode {
    /// The name in metrics and `/status`; None when members do not coordinate.
    pub(crate) fn name(&self) -> Option<&'static str> {
        match self {
            Mode::None => None,
            Mode::File(_) => Some("file"),
            Mode::Redis(_) => Some("redis"),
        }
    }
}

/// What coordination needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) mode: Mode,
    /// How long a member's whitelist lease lasts unless renewed; a member that dies holding it
    /// delays the others by at most this.
    pub(crate) lease: Duration,
    /// How long a shared record stays fresh (the reverify interval).
    pub(crate) record_ttl: Duration,
    /// How long the lease holder may take to verify.
    pub(crate) verify_timeout: Duration,
}

/// A member's proof of one IP, shared with the fleet: the IP works for the key from the fleet's
/// egress, as `by` verified at `verified_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) ip: IpAddr,
    /// Unix milliseconds.
    pub(crate) verified_at_ms: u64,
    pub(crate) by: String,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("coordination store {store}: {problem}")]
    Unavailable { store: String, problem: String },
    /// The operation that asked ran out of time first; says nothing about the store.
    #[error("no answer from the coordination store before the operation's deadline")]
    Deadline,
}

/// A store timestamp this far ahead of our clock is clock skew; further, it is not believed.
const FUTURE_SKEW_MS: u64 = 5_000;

/// Where every key lives: one account, one API key (by a one-way fingerprint, never the key
/// itself), so fleets of different accounts or keys can share a store without meeting.
#[derive(Clone, Debug)]
pub(crate) struct Scope {
    pub(crate) username: String,
    pub(crate) fingerprint: String,
}

impl Scope {
    pub(crate) fn of(credentials: &Credentials) -> Self {
        Scope {
            username: credentials.username.clone(),
            fingerprint: credentials.fingerprint(),
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
        bounded(async {
            match self {
                Store::File(s) => s.read_verified(ip).await,
                Store::Redis(s) => s.read_verified(ip).await,
            }
        })
        .await
    }

    async fn write_verified(&self, record: &Record, ttl: Duration) -> Result<(), StoreError> {
        bounded(async {
            match self {
                Store::File(s) => s.write_verified(record, ttl).await,
                Store::Redis(s) => s.write_verified(record, ttl).await,
            }
        })
        .await
    }

    /// None when the lease is now `member`'s; otherwise who holds it.
    async fn try_lease(
        &self,
        ip: IpAddr,
        member: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        bounded(async {
            match self {
                Store::File(s) => s.try_lease(ip, member, ttl).await,
                Store::Redis(s) => s.try_lease(ip, member, ttl).await,
            }
        })
        .await
    }

    /// False when the lease is no longer `member`'s.
    async fn renew_lease(
        &self,
        ip: IpAddr,
        member: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        bounded(async {
            match self {
                Store::File(s) => s.renew_lease(ip, member, ttl).await,
                Store::Redis(s) => s.renew_lease(ip, member, ttl).await,
            }
        })
        .await
    }

    async fn release_lease(&self, ip: IpAddr, member: &str) -> Result<(), StoreError> {
        bounded(async {
            match self {
                Store::File(s) => s.release_lease(ip, member).await,
                Store::Redis(s) => s.release_lease(ip, member).await,
            }
        })
        .await
    }

    /// Books one call in the fleet's sliding window, or says how long until one fits.
    async fn take_budget(
        &self,
        limit: u32,
        window: Duration,
        token: &str,
    ) -> Result<Option<Duration>, StoreError> {
        bounded(async {
            match self {
                Store::File(s) => s.take_budget(limit, window, token).await,
                Store::Redis(s) => s.take_budget(limit, window, token).await,
            }
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::File(s) => s.ping().await,
            Store::Redis(s) => s.ping().await,
        }
    }
}

/// Every store operation ends by the deadline of the operation that waits for it.
async fn bounded<T>(
    operation: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    deadline::bounded(operation)
        .await
        .unwrap_or(Err(StoreError::Deadline))
}

/// What `/status` shows of coordination; the counters are read from the metrics.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct CoordinationStatus {
    pub(crate) mode: &'static str,
    /// The store, without any password.
    pub(crate) store: String,
    pub(crate) member: String,
    pub(crate) store_up: bool,
    pub(crate) store_error: Option<String>,
    /// Who held the whitelist lease when this member last looked.
    pub(crate) lease_holder: Option<String>,
    /// Fresh records found: readiness without any sendSMS call.
    pub(crate) records_read: u64,
    pub(crate) records_written: u64,
    pub(crate) leases_taken: u64,
    /// Times this member acted alone because the store failed.
    pub(crate) fallbacks: u64,
}

/// How a coordinated `ensure` ended. The work ran at most once, and only in `Own`.
pub(crate) enum Coordinated<T, E> {
    /// This member held the lease and did the work; a success was shared as a record.
    Own(Result<T, E>),
    /// Another member proved the IP and shared a fresh record: nothing to do.
    Peer(Record),
    /// The store failed before any work: the caller decides what to do alone.
    StoreDown,
    /// Another member held the lease for longer than the wait limit without sharing a record.
    PeerBusy { holder: String, waited: Duration },
}

/// One member's side of the fleet protocol: read a fresh record, or take the lease, do the
/// work, share the record and let go; meanwhile share the API budget.
pub(crate) struct Coordinator {
    store: Store,
    member: String,
    lease_ttl: Duration,
    record_ttl: Duration,
    /// The longest one `ensure` takes, waiting for a leader included: the verify timeout plus
    /// one lease. The caller retries later.
    wait_limit: Duration,
    status: Mutex<CoordinationStatus>,
    metrics: CoordinationMetrics,
    /// The IP whose lease this member holds right now, so a shutdown can hand it back.
    holding: Mutex<Option<IpAddr>>,
    waits: Arc<Waits>,
}

/// Waiting for another member's record: 100 ms doubling to 2 s, spread ±50 % so a fleet that
/// started together does not poll in step.
const POLL: Backoff = Backoff {
    min: Duration::from_millis(100),
    max: Duration::from_secs(2),
    jitter: 0.5,
};
const STORE_TIMEOUT: Duration = Duration::from_secs(3);

impl Coordinator {
    /// None for `SENDSMS_COORDINATION=none`. Nothing is contacted yet: a store that is down at
    /// start is an outage like any other, not a reason to refuse to start.
    pub(crate) fn new(
        settings: &Settings,
        credentials: &Credentials,
        metrics: Option<CoordinationMetrics>,
        waits: Arc<Waits>,
    ) -> Result<Option<Arc<Self>>, StoreError> {
        let scope = Scope::of(credentials);
        let (store, shown) = match &settings.mode {
            Mode::None => return Ok(None),
            Mode::File(dir) => (
                Store::File(file_store::FileStore::new(dir.clone(), &scope)),
                format!("file:{}", dir.display()),
            ),
            Mode::Redis(url) => (
                Store::Redis(Box::new(redis_store::RedisStore::new(
                    url,
                    &scope,
                    STORE_TIMEOUT,
                )?)),
                url.to_string(),
            ),
        };
        let member = member_name();
        let metrics = metrics.unwrap_or_default();
        metrics.store_up.set(1);
        Ok(Some(Arc::new(Coordinator {
            store,
            lease_ttl: settings.lease,
            record_ttl: settings.record_ttl,
            wait_limit: settings.verify_timeout + settings.lease,
            status: Mutex::new(CoordinationStatus {
                mode: settings.mode.name().unwrap_or("none"),
                store: shown,
                member: member.clone(),
                store_up: true,
                ..CoordinationStatus::default()
            }),
            member,
            metrics,
            holding: Mutex::new(None),
            waits,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, CoordinationStatus> {
        lock(&self.status)
    }

    pub(crate) fn status(&self) -> CoordinationStatus {
        let mut status = self.lock().clone();
        status.records_read = self.metrics.records_read.get();
        status.records_written = self.metrics.records_written.get();
        status.leases_taken = self.metrics.leases_taken.get();
        status.fallbacks = self.metrics.fallbacks.get();
        status
    }

    /// The longest `ensure` may wait for another member before giving up.
    pub(crate) fn wait_limit(&self) -> Duration {
        self.wait_limit
    }

    pub(crate) fn store_up(&self) -> bool {
        self.lock().store_up
    }

    /// Counts one time this member acted alone because the store failed.
    pub(crate) fn count_fallback(&self) {
        self.metrics.fallbacks.inc();
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
            Ok(_) | Err(StoreError::Deadline) => {}
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
    pub(crate) async fn ping(&self) {
        let _ = self.observe(self.store.ping().await);
    }

    /// The fleet's share of `SENDSMS_API_BUDGET`: waits until the fleet-wide window has room,
    /// or fails at once when that is after the deadline in force. A store failure lets the
    /// call through; the member's local budget still holds it.
    pub(crate) async fn acquire_budget(&self, limit: u32) -> Result<(), String> {
        let token = format!("{}/{}", self.member, rand::random::<u64>());
        let window = Duration::from_secs(60);
        loop {
            match self.observe(self.store.take_budget(limit, window, &token).await) {
                Ok(None) | Err(_) => return Ok(()),
                Ok(Some(wait)) => {
                    // Never longer than the window: a store that says otherwise is wrong.
                    let wait = wait.clamp(Duration::from_millis(50), window);
                    if !deadline::allows(Instant::now() + wait) {
                        return Err(format!(
                            "the fleet's API budget ({limit} calls per minute) has no room before the deadline (the next call fits in {wait:.1?})"
                        ));
                    }
                    let cause = format!(
                        "the fleet's API budget (SENDSMS_API_BUDGET={limit} calls a minute) is spent"
                    );
                    self.waits.sleep(cause, wait.min(POLL.max * 5)).await;
                }
            }
        }
    }

    /// Makes `ip` whitelisted and verified for the fleet: a fresh record from another member is
    /// enough; otherwise one member at a time, the lease holder, runs `work` and shares the
    /// record. `not_before_ms` refuses records older than that (a forced recheck wants news).
    /// `work` is a future, so it does nothing unless this member leads and awaits it.
    pub(crate) async fn ensure<T, E>(
        &self,
        ip: IpAddr,
        not_before_ms: u64,
        work: impl Future<Output = Result<T, E>>,
    ) -> Coordinated<T, E> {
        let started = Instant::now();
        let mut polls = POLL.delays();
        let busy = || Coordinated::PeerBusy {
            holder: self.lock().lease_holder.clone().unwrap_or_default(),
            waited: started.elapsed(),
        };
        // Listed from the first time another member holds the lease until this call returns.
        let mut waiting = None;
        loop {
            match self.fresh_record(ip, not_before_ms).await {
                Ok(Some(record)) => return Coordinated::Peer(record),
                Ok(None) => {}
                // Out of time is not a store failure: acting alone now would be too late.
                Err(StoreError::Deadline) => return busy(),
                Err(_) => return Coordinated::StoreDown,
            }
            match self.observe(self.store.try_lease(ip, &self.member, self.lease_ttl).await) {
                Ok(None) => {
                    // The wait is over: this member leads now.
                    drop(waiting.take());
                    // The previous holder may have written its record and let go between our
                    // read and our lease: look again before spending any call.
                    if let Ok(Some(record)) = self.fresh_record(ip, not_before_ms).await {
                        deadline::cleanup(STORE_TIMEOUT * 2, self.release(ip)).await;
                        return Coordinated::Peer(record);
                    }
                    return Coordinated::Own(self.lead(ip, work).await);
                }
                Ok(Some(holder)) => {
                    let holder = printable(&holder);
                    if self.lock().lease_holder.as_ref() != Some(&holder) {
                        tracing::info!(%ip, %holder, "another member is whitelisting; waiting for its record");
                    }
                    if waiting.is_none() {
                        let cause = format!(
                            "another member ({holder}) holds the whitelist lease for {ip}; waiting for its record"
                        );
                        let left = self.wait_limit.saturating_sub(started.elapsed());
                        waiting = Some(self.waits.begin(cause, left));
                    }
                    self.lock().lease_holder = Some(holder);
                }
                Err(StoreError::Deadline) => return busy(),
                Err(_) => return Coordinated::StoreDown,
            }
            // The next look must fit before giving up (the wait limit or the deadline in
            // force), with time left for the store to answer it.
            let next = Instant::now() + polls.next().unwrap_or(POLL.max);
            if next >= deadline::clamp(started + self.wait_limit) {
                return busy();
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// A record for `ip` written at or after `not_before_ms`, counted when found. Its time is
    /// data, not truth: a record from the future (a forged one, or a member whose clock is
    /// ahead) is not believed, as it would stay "fresh" for as long as it claims.
    async fn fresh_record(
        &self,
        ip: IpAddr,
        not_before_ms: u64,
    ) -> Result<Option<Record>, StoreError> {
        let latest = unix_now_ms().saturating_add(FUTURE_SKEW_MS);
        let record = self
            .observe(self.store.read_verified(ip).await)?
            .filter(|r| r.ip == ip && r.verified_at_ms >= not_before_ms)
            .filter(|r| {
                let believable = r.verified_at_ms <= latest;
                if !believable {
                    tracing::warn!(%ip, by = %printable(&r.by), verified_at_ms = r.verified_at_ms, "a fleet record dated in the future is ignored");
                }
                believable
            })
            .map(|r| Record {
                by: printable(&r.by),
                ..r
            });
        if let Some(record) = &record {
            self.metrics.records_read.inc();
            tracing::info!(%ip, by = %record.by, "verified by another member of the fleet");
        }
        Ok(record)
    }

    async fn lead<T, E>(
        &self,
        ip: IpAddr,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        self.metrics.leases_taken.inc();
        self.lock().lease_holder = Some(self.member.clone());
        tracing::info!(%ip, member = %self.member, "took the whitelist lease");
        *lock(&self.holding) = Some(ip);
        // The renewals run beside the work, both polled by this select: a renewal that waits
        // on the store never stops the work (which may itself be waiting on the store), and
        // the work never waits for a renewal.
        let renewing = async {
            loop {
                tokio::time::sleep(self.lease_ttl / 3).await;
                if !self.renew(ip).await {
                    break;
                }
            }
        };
        tokio::pin!(work, renewing);
        let mut renewing_done = false;
        let result = loop {
            tokio::select! {
                result = &mut work => break result,
                () = &mut renewing, if !renewing_done => renewing_done = true,
            }
        };
        // Sharing the proof and letting go have their own time, even if the work used all of
        // the operation's: otherwise the fleet would redo the work, or wait out the lease.
        deadline::cleanup(STORE_TIMEOUT * 2, async {
            if result.is_ok() {
                let record = Record {
                    ip,
                    verified_at_ms: unix_now_ms(),
                    by: self.member.clone(),
                };
                // The record goes in before the lease goes away, so no waiter takes a lease
                // for an IP that is already proven.
                if self
                    .observe(self.store.write_verified(&record, self.record_ttl).await)
                    .is_ok()
                {
                    self.metrics.records_written.inc();
                }
            }
            self.release(ip).await;
        })
        .await;
        result
    }
}

impl Coordinator {
    async fn release(&self, ip: IpAddr) {
        let _ = self.observe(self.store.release_lease(ip, &self.member).await);
        *lock(&self.holding) = None;
    }

    /// On shutdown: a lease held mid-work goes back at once, so the next member need not wait
    /// for it to expire (a rolling update stops the holder as often as any other member).
    pub(crate) async fn hand_back(&self) {
        let held = *lock(&self.holding);
        if let Some(ip) = held {
            tracing::info!(%ip, "handing the whitelist lease back");
            self.release(ip).await;
        }
    }

    /// False once the lease is no longer ours: there is nothing left to renew.
    async fn renew(&self, ip: IpAddr) -> bool {
        let renewed = self.observe(
            self.store
                .renew_lease(ip, &self.member, self.lease_ttl)
                .await,
        );
        if let Ok(false) = renewed {
            // Another member may now run the same add: a duplicate write, not harm.
            tracing::warn!(%ip, "the whitelist lease expired while this member held it");
            return false;
        }
        true
    }
}

#[cfg(test)]
impl Coordinator {
    /// This member under another name: one process, several members.
    pub(crate) fn renamed(mut self: Arc<Self>, name: &str) -> Arc<Self> {
        Arc::get_mut(&mut self).expect("not shared yet").member = name.to_owned();
        self
    }
}

/// A store's time to live in milliseconds; never 0, which Redis refuses and which would expire
/// a file record at once.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Names this member in records and leases: the pod or host name and the process id.
fn member_name() -> String {
    format!("{}/{}", crate::util::host_name(), std::process::id())
}

#[cfg(test)]
mod contract {
    use super::*;

    /// What every store must do, checked against each backend by its own tests.
    pub(super) async fn assert_store_contract(store: Store) {
        let ip: IpAddr = "203.0.113.7".parse().expect("ip");
        let other: IpAddr = "203.0.113.8".parse().expect("ip");
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
        // Each address has its record and its lease apart: a record never answers for another
        // address (that would make an unlisted one "verified"), nor frees a lease.
        assert_eq!(
            store.read_verified(other).await.expect("read"),
            None,
            "a record answers for its own address only"
        );
        assert_eq!(
            store.try_lease(ip, "c", ttl).await.expect("lease"),
            Some("b".into()),
            "a record leaves the lease alone"
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
        tokio::time::sleep(short + Duration::from_millis(50)).await;
        assert_eq!(
            store.take_budget(2, short, "t4").await.expect("budget"),
            None,
            "bookings older than the window no longer count"
        );
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Logs, flow_settings};

    const IP: &str = "203.0.113.7";

    fn ip() -> IpAddr {
        IP.parse().expect("ip")
    }

    /// A member of a fleet sharing the file store in `dir`, named `name` (one process, several
    /// members), with a lease of `lease` and a verify timeout of `verify`.
    fn member(
        dir: &std::path::Path,
        name: &str,
        lease: Duration,
        verify: Duration,
        waits: Arc<Waits>,
    ) -> Arc<Coordinator> {
        let flow = flow_settings(verify);
        let settings = Settings {
            mode: Mode::File(dir.to_path_buf()),
            lease,
            ..flow.coordination
        };
        Coordinator::new(&settings, &flow.credentials, None, waits)
            .expect("store")
            .expect("coordinated")
            .renamed(name)
    }

    /// `who` tries to take the lease on `ip()` for `lease` in `m`'s store: the holder it finds,
    /// `None` when `who` took it.
    async fn try_lease(m: &Coordinator, who: &str, lease: Duration) -> Option<String> {
        m.store.try_lease(ip(), who, lease).await.expect("store")
    }

    fn default_member(dir: &std::path::Path, name: &str) -> Arc<Coordinator> {
        let minute = Duration::from_secs(60);
        member(dir, name, minute, minute, Arc::default())
    }

    #[tokio::test]
    async fn a_member_is_named_by_host_and_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flow = flow_settings(Duration::from_secs(30));
        let settings = Settings {
            mode: Mode::File(dir.path().to_path_buf()),
            ..flow.coordination
        };
        let coordinator = Coordinator::new(&settings, &flow.credentials, None, Arc::default())
            .expect("store")
            .expect("coordinated");
        let status = coordinator.status();
        assert_eq!(
            status.member,
            format!("{}/{}", crate::util::host_name(), std::process::id())
        );
        assert_eq!((status.mode, status.store_up), ("file", true));
    }

    #[tokio::test]
    async fn every_answer_says_whether_the_store_is_up_and_a_ping_sees_it_come_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocked = dir.path().join("fleet");
        std::fs::write(&blocked, b"a file where the store's directory should be").expect("file");
        let member = default_member(&blocked.join("store"), "a");
        let logs = Logs::capture();
        assert!(member.store_up(), "up until an answer says otherwise");
        for _ in 0..2 {
            member.ping().await;
            assert!(!member.store_up());
            let status = member.status();
            assert!(!status.store_up);
            assert!(
                status
                    .store_error
                    .as_deref()
                    .is_some_and(|e| e.contains("file:")),
                "{status:?}"
            );
            assert_eq!(member.metrics.store_up.get(), 0);
        }
        std::fs::remove_file(&blocked).expect("unblock");
        for _ in 0..2 {
            member.ping().await;
            assert!(member.store_up());
            assert_eq!(member.status().store_error, None);
            assert_eq!(member.metrics.store_up.get(), 1);
        }
        let text = logs.text();
        assert_eq!(
            text.matches("coordination store unreachable").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("reachable again").count(), 1, "{text}");
    }

    #[tokio::test]
    async fn the_fleet_budget_refuses_at_once_past_the_deadline_and_shows_its_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        let waits = Arc::new(Waits::default());
        let minute = Duration::from_secs(60);
        let member = member(dir.path(), "a", minute, minute, Arc::clone(&waits));
        for _ in 0..2 {
            member.acquire_budget(2).await.expect("room");
        }
        let soon = Instant::now() + Duration::from_secs(5);
        let refused = tokio::time::timeout(
            Duration::from_secs(2),
            deadline::within(soon, member.acquire_budget(2)),
        )
        .await
        .expect("refused at once, not after a wait");
        let why = refused.expect_err("no room before the deadline");
        assert!(why.contains("has no room before the deadline"), "{why}");
        // With time enough it waits, in steps of at most ten seconds, and says so.
        let later = Instant::now() + Duration::from_secs(120);
        let waiting = tokio::spawn({
            let member = Arc::clone(&member);
            async move { deadline::within(later, member.acquire_budget(2)).await }
        });
        let listed = loop {
            let listed = waits.current();
            if !listed.is_empty() || waiting.is_finished() {
                break listed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        waiting.abort();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(
            listed[0]
                .cause
                .contains("the fleet's API budget (SENDSMS_API_BUDGET=2 calls a minute) is spent"),
            "{listed:?}"
        );
        assert!((9.0..=10.0).contains(&listed[0].seconds), "{listed:?}");
    }

    #[tokio::test]
    async fn the_holder_renews_its_lease_while_it_works_and_lets_go_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Renewed every 200 ms, a renewal may come 400 ms late before the lease lapses.
        let lease = Duration::from_millis(600);
        let holder = member(dir.path(), "a", lease, lease, Arc::default());
        let other = member(dir.path(), "b", lease, lease, Arc::default());
        let work = async {
            // Work longer than the lease: only the renewals keep it.
            tokio::time::sleep(Duration::from_millis(1000)).await;
            assert_eq!(
                try_lease(&other, "b", lease).await,
                Some("a".to_owned()),
                "still the holder's after {lease:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
            Err::<(), ()>(())
        };
        assert!(matches!(
            holder.ensure(ip(), 0, work).await,
            Coordinated::Own(Err(()))
        ));
        // A failed work shares no record and lets go at once.
        assert_eq!(other.store.read_verified(ip()).await.expect("store"), None);
        assert_eq!(try_lease(&other, "b", lease).await, None, "released");
        assert_eq!(holder.status().leases_taken, 1);
    }

    #[tokio::test]
    async fn a_lost_lease_is_said_once_and_no_longer_renewed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lease = Duration::from_millis(150);
        let holder = member(dir.path(), "a", lease, lease, Arc::default());
        let thief = member(dir.path(), "b", lease, lease, Arc::default());
        let logs = Logs::capture();
        let work = async {
            // Another member takes the lease as if it had expired.
            thief.store.release_lease(ip(), "a").await.expect("store");
            try_lease(&thief, "b", Duration::from_secs(60)).await;
            tokio::time::sleep(Duration::from_millis(600)).await;
            Ok::<(), ()>(())
        };
        assert!(matches!(
            holder.ensure(ip(), 0, work).await,
            Coordinated::Own(Ok(()))
        ));
        let text = logs.text();
        assert_eq!(
            text.matches("the whitelist lease expired while this member held it")
                .count(),
            1,
            "{text}"
        );
        assert_eq!(
            try_lease(&thief, "c", lease).await,
            Some("b".to_owned()),
            "the holder let go of nothing it no longer held"
        );
    }

    #[tokio::test]
    async fn a_lease_held_mid_work_is_handed_back_on_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let holder = default_member(dir.path(), "a");
        let other = default_member(dir.path(), "b");
        let (started, leading) = tokio::sync::oneshot::channel::<()>();
        let lead = tokio::spawn({
            let holder = Arc::clone(&holder);
            async move {
                let work = async {
                    let _ = started.send(());
                    std::future::pending::<Result<(), ()>>().await
                };
                holder.ensure(ip(), 0, work).await;
            }
        });
        leading.await.expect("the holder leads");
        let minute = Duration::from_secs(60);
        assert_eq!(try_lease(&other, "b", minute).await, Some("a".to_owned()));
        holder.hand_back().await;
        assert_eq!(try_lease(&other, "b", minute).await, None, "handed back");
        lead.abort();
    }

    #[tokio::test]
    async fn a_waiter_says_once_who_it_waits_for_and_gives_up_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let holder = default_member(dir.path(), "a");
        let waiter = default_member(dir.path(), "b");
        let minute = Duration::from_secs(60);
        try_lease(&holder, "a", minute).await;
        let logs = Logs::capture();
        let started = Instant::now();
        let work = async { Ok::<(), ()>(()) };
        let ended = deadline::within(
            started + Duration::from_millis(900),
            waiter.ensure(ip(), 0, work),
        );
        let ended = tokio::time::timeout(Duration::from_secs(3), ended)
            .await
            .expect("given up at the deadline");
        assert!(
            matches!(&ended, Coordinated::PeerBusy { holder, .. } if holder == "a"),
            "busy"
        );
        assert!(started.elapsed() < Duration::from_millis(900));
        let text = logs.text();
        assert_eq!(
            text.matches("another member is whitelisting; waiting for its record")
                .count(),
            1,
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_record_from_the_future_is_not_believed_and_one_taken_is_shown_safely() {
        let dir = tempfile::tempdir().expect("tempdir");
        let member = default_member(dir.path(), "a");
        let logs = Logs::capture();
        let hour = 3_600_000;
        let forged = Record {
            ip: ip(),
            verified_at_ms: unix_now_ms() + hour,
            by: "z".into(),
        };
        member
            .store
            .write_verified(&forged, Duration::from_secs(60))
            .await
            .expect("store");
        assert_eq!(member.fresh_record(ip(), 0).await.expect("store"), None);
        assert!(
            logs.text()
                .contains("a fleet record dated in the future is ignored"),
            "{}",
            logs.text()
        );
        let odd = Record {
            ip: ip(),
            verified_at_ms: unix_now_ms(),
            by: "host\nforged line".into(),
        };
        member
            .store
            .write_verified(&odd, Duration::from_secs(60))
            .await
            .expect("store");
        let read = member.fresh_record(ip(), 0).await.expect("store");
        assert_eq!(read.map(|r| r.by), Some("host\\nforged line".into()));
        assert_eq!(member.status().records_read, 1);
    }

    #[test]
    fn each_mode_is_named_in_metrics_and_status() {
        let redis = Mode::Redis(SecretUrl::new("redis://127.0.0.1:6379/0".into()));
        let file = Mode::File(PathBuf::from("/var/lib/fleet"));
        assert_eq!(
            [Mode::None.name(), file.name(), redis.name()],
            [None, Some("file"), Some("redis")]
        );
    }

    #[tokio::test]
    async fn a_wait_for_another_members_lease_is_shown_while_it_lasts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let flow = flow_settings(Duration::from_secs(30));
        let mut settings = flow.coordination.clone();
        settings.mode = Mode::File(dir.path().to_path_buf());
        let member = |name: &str, waits: Arc<Waits>| {
            Coordinator::new(&settings, &flow.credentials, None, waits)
                .expect("store")
                .expect("coordinated")
                .renamed(name)
        };
        let waits = Arc::new(Waits::default());
        let (holder, waiter) = (member("a", Arc::default()), member("b", Arc::clone(&waits)));
        let ip: IpAddr = "203.0.113.7".parse().expect("ip");
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let (started, leading) = tokio::sync::oneshot::channel::<()>();
        let lead = tokio::spawn(async move {
            let work = async {
                let _ = started.send(());
                let _ = finished.await;
                Ok::<(), ()>(())
            };
            matches!(holder.ensure(ip, 0, work).await, Coordinated::Own(Ok(())))
        });
        leading.await.expect("the holder leads");
        let wait = tokio::spawn(async move {
            let work = async { Ok::<(), ()>(()) };
            matches!(waiter.ensure(ip, 0, work).await, Coordinated::Peer(_))
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let listed = loop {
            let listed = waits.current();
            if !listed.is_empty() || Instant::now() > deadline {
                break listed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert!(
            listed[0]
                .cause
                .contains("another member (a) holds the whitelist lease for 203.0.113.7"),
            "{listed:?}"
        );
        assert!(
            listed[0].seconds > 30.0,
            "at most the wait limit: {listed:?}"
        );
        let _ = finish.send(());
        assert!(lead.await.expect("holder"), "the holder did the work");
        assert!(
            wait.await.expect("waiter"),
            "the waiter took the holder's record"
        );
        assert!(waits.current().is_empty(), "the wait is over");
    }
}
