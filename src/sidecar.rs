//! `run`: follow the egress IP for the life of the pod, keep it whitelisted and verified, report readiness.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::budget::ApiBudget;
use crate::config::Config;
use crate::coord::{CoordinationStatus, Coordinator, Proof};
use crate::detect::{Detector, Family};
use crate::metrics::{CallLabels, FamilyLabels, Metrics, ModeLabels};
use crate::reconcile::{Outcome, Reconciler};
use crate::sendsms::{CallObserver, Class, Whitelist};
use crate::state::{StateFile, VerifiedIp, unix_now_ms};

/// Where one family stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Detecting,
    Verifying,
    Verified,
    Failed,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FamilyStatus {
    pub phase: Phase,
    /// The address detection reported last.
    pub current_ip: Option<IpAddr>,
    pub verified_ip: Option<IpAddr>,
    pub verified_at: Option<String>,
    pub last_detected_at: Option<String>,
    /// Set while detection fails; the last verified state is kept meanwhile.
    pub detection_error: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    pub detections: u64,
    pub detection_failures: u64,
    pub ip_changes: u64,
    pub verifications: u64,
    pub verification_failures: u64,
    pub rechecks: u64,
    pub api_calls: u64,
}

/// What `/status` answers, and what `/readyz` decides on.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub ready: bool,
    pub reason: String,
    pub families: BTreeMap<Family, FamilyStatus>,
    pub whitelist: Option<Whitelist>,
    pub whitelist_seen_at: Option<String>,
    pub last_error: Option<String>,
    pub counters: Counters,
    pub started_at: String,
    /// Absent when `SENDSMS_COORDINATION=none`.
    pub coordination: Option<CoordinationStatus>,
}

/// The answer to `POST /recheck`.
#[derive(Clone, Debug, Serialize)]
pub struct RecheckResult {
    /// False when a recheck ran too recently and this one was answered from it.
    pub rechecked: bool,
    pub status: Snapshot,
}

pub type RecheckRequest = oneshot::Sender<RecheckResult>;

/// State the control loop writes and the status server reads.
pub struct Shared {
    snapshot: Mutex<Snapshot>,
    heartbeat: Mutex<Instant>,
    stale_after: Duration,
    pub metrics: Metrics,
    pub recheck: mpsc::Sender<RecheckRequest>,
    coordinator: Option<Arc<Coordinator>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Snapshot> {
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = self.lock().clone();
        snapshot.coordination = self.coordinator.as_ref().map(|c| c.status());
        snapshot
    }

    /// The control loop is alive when it checked in within the longest a round may take.
    pub fn alive(&self) -> bool {
        let last = *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner());
        last.elapsed() <= self.stale_after
    }

    fn beat(&self) {
        *self.heartbeat.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }
}

fn timestamp(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

fn timestamp_of(unix: u64) -> String {
    timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(unix))
}

/// Every sendSMS call passes the budget first (this member's, then the fleet's) and is
/// counted after.
struct Accounting {
    budget: ApiBudget,
    per_minute: u32,
    shared: Arc<Shared>,
}

impl CallObserver for Accounting {
    fn before_call(&self, _action: &'static str) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {
            self.budget.acquire().await;
            if let Some(coordinator) = &self.shared.coordinator {
                coordinator.acquire_budget(self.per_minute).await;
            }
        })
    }

    fn after_call(&self, action: &'static str, class: Class) {
        self.shared
            .metrics
            .api_calls
            .get_or_create(&CallLabels {
                action,
                outcome: class.label(),
            })
            .inc();
        self.shared.lock().counters.api_calls += 1;
    }
}

/// Per-family memory of the control loop.
#[derive(Default)]
struct Tracked {
    verified: Option<VerifiedIp>,
    failures: u32,
    retry_at: Option<Instant>,
}

const RETRY_MIN: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(5 * 60);

pub struct Sidecar {
    config: Config,
    detector: Detector,
    reconciler: Reconciler,
    /// Builds fresh clients: after an egress change, a kept-alive connection from the old
    /// address could hang, or worse, "prove" the new address over the old route.
    make_reconciler: Box<dyn Fn() -> Result<Reconciler, crate::cli::Failure> + Send>,
    state_file: Option<StateFile>,
    shared: Arc<Shared>,
    tracked: BTreeMap<Family, Tracked>,
    was_ready: bool,
}

impl Sidecar {
    /// Builds the loop and the state it shares; `reconciler` gets the budgeted, counted clients.
    pub fn new(
        config: Config,
        make_reconciler: impl Fn(Arc<dyn CallObserver>) -> Result<Reconciler, crate::cli::Failure>
        + Send
        + 'static,
    ) -> Result<(Self, Arc<Shared>, mpsc::Receiver<RecheckRequest>), crate::cli::Failure> {
        let (recheck, requests) = mpsc::channel(64);
        let metrics = Metrics::default();
        let coordinator = Coordinator::from_config(&config, metrics.coordination.clone())?;
        metrics
            .coordination_mode
            .get_or_create(&ModeLabels {
                mode: config.coordination.mode(),
            })
            .set(1);
        let families = config.detection.families.len() as u32;
        // A coordinated member may wait for a lease holder longer than it would verify alone.
        let verification = coordinator
            .as_ref()
            .map_or(config.verify_timeout, |c| c.wait_limit());
        let round = config.detection.timeout + verification;
        let shared = Arc::new(Shared {
            snapshot: Mutex::new(Snapshot {
                ready: false,
                reason: "starting: the egress IP is not detected yet".into(),
                families: config
                    .detection
                    .families
                    .iter()
                    .map(|f| (*f, FamilyStatus::default()))
                    .collect(),
                whitelist: None,
                whitelist_seen_at: None,
                last_error: None,
                counters: Counters::default(),
                started_at: timestamp(SystemTime::now()),
                coordination: None,
            }),
            heartbeat: Mutex::new(Instant::now()),
            stale_after: config.poll_interval.mul_f64(1.2)
                + round * families.max(1)
                + Duration::from_secs(30),
            metrics,
            recheck,
            coordinator,
        });
        let accounting = Arc::new(Accounting {
            budget: ApiBudget::per_minute(config.api_budget),
            per_minute: config.api_budget,
            shared: Arc::clone(&shared),
        });
        let observer: Arc<dyn CallObserver> = accounting;
        let reconciler = make_reconciler(Arc::clone(&observer))?;
        let make_reconciler = Box::new(move || make_reconciler(Arc::clone(&observer)));
        let state_file = config.state_file.clone().map(|path| {
            StateFile::new(path, &config.credentials.username, config.api_url.as_str())
        });
        let mut tracked: BTreeMap<Family, Tracked> = config
            .detection
            .families
            .iter()
            .map(|f| (*f, Tracked::default()))
            .collect();
        if let Some(file) = &state_file {
            for entry in file.load() {
                if let Some(slot) = tracked.get_mut(&entry.family) {
                    tracing::info!(ip = %entry.ip, family = %entry.family, "verified IP restored from the state file");
                    slot.verified = Some(entry);
                }
            }
        }
        let sidecar = Sidecar {
            detector: Detector::new(&config.detection),
            config,
            reconciler,
            make_reconciler,
            state_file,
            shared: Arc::clone(&shared),
            tracked,
            was_ready: false,
        };
        Ok((sidecar, shared, requests))
    }

    /// The control loop; returns when `shutdown` resolves, abandoning any round in progress
    /// (the state file is only ever replaced whole, so nothing is left half-written).
    pub async fn run(
        mut self,
        mut rechecks: mpsc::Receiver<RecheckRequest>,
        shutdown: impl Future<Output = ()>,
    ) {
        let mut shutdown = pin!(shutdown);
        let mut next_poll = Instant::now();
        let mut last_recheck: Option<Instant> = None;
        loop {
            let work = async {
                let wake = self
                    .tracked
                    .values()
                    .filter_map(|t| t.retry_at)
                    .fold(next_poll, Instant::min);
                self.shared.beat();
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => {
                        self.round(false).await;
                        next_poll = Instant::now() + jittered(self.config.poll_interval);
                    }
                    Some(first) = rechecks.recv() => {
                        // Everyone who asked while we were busy shares this one answer.
                        let mut waiting = vec![first];
                        while let Ok(more) = rechecks.try_recv() {
                            waiting.push(more);
                        }
                        let due = last_recheck.is_none_or(|t| t.elapsed() >= self.config.recheck_min_interval);
                        if due {
                            last_recheck = Some(Instant::now());
                            self.shared.lock().counters.rechecks += 1;
                            self.round(true).await;
                            next_poll = Instant::now() + jittered(self.config.poll_interval);
                        }
                        let status = self.shared.snapshot();
                        for reply in waiting {
                            let _ = reply.send(RecheckResult { rechecked: due, status: status.clone() });
                        }
                    }
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = work => {}
            }
        }
        tracing::info!("stopping");
    }

    /// One pass over every family. `force` re-proves even a fresh, unchanged IP.
    async fn round(&mut self, force: bool) {
        self.shared.beat();
        if let Some(coordinator) = self.shared.coordinator.as_ref().filter(|c| !c.store_up()) {
            coordinator.ping().await;
        }
        let families: Vec<Family> = self.tracked.keys().copied().collect();
        for family in families {
            self.follow(family, force).await;
            self.shared.beat();
        }
        self.publish_readiness();
    }

    async fn follow(&mut self, family: Family, force: bool) {
        let started = Instant::now();
        let detected = self.detector.detect(family).await;
        let metrics = &self.shared.metrics;
        let ip = {
            let mut snap = self.shared.lock();
            snap.counters.detections += 1;
            let status = snap.families.entry(family).or_default();
            match detected {
                Err(e) => {
                    metrics.detection_failures.inc();
                    if status.detection_error.is_none() {
                        tracing::warn!(%family, error = %e, "egress IP detection failed; keeping the last verified state");
                    }
                    status.detection_error = Some(e.to_string());
                    snap.counters.detection_failures += 1;
                    return;
                }
                Ok(found) => {
                    metrics
                        .detection_seconds
                        .observe(started.elapsed().as_secs_f64());
                    if status.detection_error.take().is_some() {
                        tracing::info!(%family, ip = %found.ip, "egress IP detection recovered");
                    }
                    status.current_ip = Some(found.ip);
                    status.last_detected_at = Some(timestamp(SystemTime::now()));
                    found.ip
                }
            }
        };
        let Some(tracked) = self.tracked.get_mut(&family) else {
            return;
        };
        let previous = tracked.verified.as_ref().map(|v| v.ip);
        let reproof = previous == Some(ip);
        if let Some(entry) = tracked.verified.as_ref().filter(|v| v.ip == ip) {
            if !force && entry.age() < self.config.reverify_interval {
                // Unchanged and recently proven (perhaps before a restart): no API call at all.
                let verified_at = timestamp_of(entry.verified_at);
                self.mark(family, |s| {
                    s.phase = Phase::Verified;
                    s.verified_ip = Some(ip);
                    s.verified_at = Some(verified_at);
                });
                return;
            }
        } else {
            match previous {
                Some(old) => {
                    tracing::info!(%family, %old, new = %ip, "egress IP changed");
                    self.shared.metrics.ip_changes.inc();
                    self.shared.lock().counters.ip_changes += 1;
                    tracked.failures = 0;
                    tracked.retry_at = None;
                    match (self.make_reconciler)() {
                        Ok(fresh) => self.reconciler = fresh,
                        Err(e) => {
                            tracing::warn!(error = %e.message, "fresh API clients could not be built")
                        }
                    }
                }
                None => tracing::info!(%family, %ip, "egress IP detected"),
            }
            tracked.verified = None;
        }
        if !force && tracked.retry_at.is_some_and(|at| at > Instant::now()) {
            return;
        }
        // A forced recheck wants news: a record written before it was asked does not answer it.
        let not_before_ms = if force { unix_now_ms() } else { 0 };
        self.verify(family, ip, reproof, not_before_ms).await;
    }

    /// `reproof`: the IP is verified already and stays ready while it is proven again.
    async fn verify(&mut self, family: Family, ip: IpAddr, reproof: bool, not_before_ms: u64) {
        if !reproof {
            self.mark(family, |s| s.phase = Phase::Verifying);
            self.publish_readiness();
        }
        let started = Instant::now();
        let result = match &self.shared.coordinator {
            Some(coordinator) => {
                coordinator
                    .ensure(ip, &self.reconciler, not_before_ms)
                    .await
            }
            None => self.reconciler.ensure(ip).await.map(Proof::Own),
        };
        let Some(tracked) = self.tracked.get_mut(&family) else {
            return;
        };
        match result {
            Ok(proof) => {
                let (entry, whitelist) = match proof {
                    Proof::Own(report) => {
                        if matches!(report.outcome, Outcome::Added { .. }) {
                            tracing::info!(%family, %ip, "whitelisted and verified");
                        } else {
                            tracing::info!(%family, %ip, "verified: already whitelisted");
                        }
                        (VerifiedIp::now(ip), Some(report.whitelist))
                    }
                    // Re-verified when the fleet's record ages out, not when this member's copy does.
                    Proof::Peer(record) => (
                        VerifiedIp {
                            family,
                            ip,
                            verified_at: record.verified_at_ms / 1000,
                        },
                        None,
                    ),
                };
                self.shared
                    .metrics
                    .verification_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.shared
                    .metrics
                    .last_success
                    .get_or_create(&FamilyLabels {
                        family: family.as_str(),
                    })
                    .set(entry.verified_at as i64);
                if let Some(whitelist) = &whitelist {
                    self.shared
                        .metrics
                        .whitelist_size
                        .set(whitelist.len() as i64);
                }
                tracked.verified = Some(entry.clone());
                tracked.failures = 0;
                tracked.retry_at = None;
                {
                    let mut snap = self.shared.lock();
                    snap.counters.verifications += 1;
                    if let Some(whitelist) = whitelist {
                        snap.whitelist = Some(whitelist);
                        snap.whitelist_seen_at = Some(timestamp(SystemTime::now()));
                    }
                    let status = snap.families.entry(family).or_default();
                    status.phase = Phase::Verified;
                    status.verified_ip = Some(ip);
                    status.verified_at = Some(timestamp_of(entry.verified_at));
                    status.last_error = None;
                }
                self.save_state();
            }
            Err(e) => {
                tracked.failures = tracked.failures.saturating_add(1);
                let delay = RETRY_MIN
                    .saturating_mul(1 << tracked.failures.saturating_sub(1).min(10))
                    .min(RETRY_MAX)
                    .min(self.config.poll_interval.max(RETRY_MIN));
                tracked.retry_at = Some(Instant::now() + delay);
                tracked.verified = None;
                tracing::warn!(%family, %ip, error = %e, retry_in = ?delay, "whitelisting failed");
                let mut snap = self.shared.lock();
                snap.counters.verification_failures += 1;
                snap.last_error = Some(e.to_string());
                let status = snap.families.entry(family).or_default();
                status.phase = Phase::Failed;
                status.verified_ip = None;
                status.last_error = Some(format!("{e} (retrying in {}s)", delay.as_secs()));
            }
        }
    }

    fn mark(&self, family: Family, change: impl FnOnce(&mut FamilyStatus)) {
        change(self.shared.lock().families.entry(family).or_default());
    }

    fn save_state(&self) {
        let Some(file) = &self.state_file else { return };
        let verified: Vec<VerifiedIp> = self
            .tracked
            .values()
            .filter_map(|t| t.verified.clone())
            .collect();
        if let Err(e) = file.save(&verified) {
            // The whitelist is fine; only the restart shortcut is lost, so this is no failure.
            tracing::warn!(error = %e, "state file not written");
        }
    }

    fn publish_readiness(&mut self) {
        let (ready, reason) = {
            let mut snap = self.shared.lock();
            let mut problems = Vec::new();
            for (family, status) in &snap.families {
                match (status.phase, status.current_ip, status.verified_ip) {
                    (Phase::Verified, Some(current), Some(verified)) if current == verified => {}
                    (Phase::Detecting, None, _) => {
                        problems.push(format!("{family}: egress IP not detected yet"))
                    }
                    (Phase::Failed, ip, _) => problems.push(format!(
                        "{family}: {} not whitelisted: {}",
                        ip.map(|i| i.to_string()).unwrap_or_default(),
                        status.last_error.as_deref().unwrap_or("failed")
                    )),
                    (_, ip, _) => problems.push(format!(
                        "{family}: {} not verified yet",
                        ip.map(|i| i.to_string()).unwrap_or_default()
                    )),
                }
            }
            let ready = problems.is_empty();
            snap.ready = ready;
            snap.reason = if ready {
                let ips: Vec<String> = snap
                    .families
                    .iter()
                    .filter_map(|(f, s)| s.verified_ip.map(|ip| format!("{f} {ip}")))
                    .collect();
                format!("ready: {} whitelisted and verified", ips.join(", "))
            } else {
                problems.join("; ")
            };
            (ready, snap.reason.clone())
        };
        self.shared.metrics.ready.set(i64::from(ready));
        if ready != self.was_ready {
            tracing::info!(ready, %reason, "{}", if ready { "ready" } else { "not ready" });
            self.was_ready = ready;
        }
    }
}

/// ±10%, so a fleet started together does not poll in step.
fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(rand::random_range(0.9..=1.1))
}

/// `run`: the status server and the control loop, until SIGTERM or SIGINT (then exit 0 within 5 s).
pub async fn run_until_signal(config: Config) -> Result<crate::cli::Exit, crate::cli::Failure> {
    use crate::cli::{Exit, Failure};
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure {
            exit: Exit::Config,
            message: format!("SENDSMS_LISTEN={listen} cannot be bound: {e}"),
        })?;
    let allow_remote = config.recheck_allow_remote;
    let recheck_timeout = config.verify_timeout * 2 + config.detection.timeout;
    let reconciler_config = config.clone();
    let (sidecar, shared, rechecks) = Sidecar::new(config, move |observer| {
        crate::cli::reconciler(&reconciler_config, Some(observer))
    })?;
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let router = crate::status::router(Arc::clone(&shared), allow_remote, recheck_timeout);
    let server = tokio::spawn(crate::status::serve(listener, router, async move {
        let _ = server_stopped.await;
    }));
    tracing::info!(%listen, "status server listening");
    sidecar.run(rechecks, shutdown_signal()).await;
    if let Some(coordinator) = &shared.coordinator {
        // Bounded: a store that does not answer must not hold up the exit.
        let _ = tokio::time::timeout(Duration::from_secs(2), coordinator.hand_back()).await;
    }
    let _ = stop_server.send(());
    // In-flight status requests get a moment; the process exits regardless.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(Exit::Success)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        // Without a SIGTERM handler, SIGINT still works; SIGTERM then kills as it would anyway.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
