//! The status model: what the control loop writes and the status server reads (readiness, per-family state).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::coord::{CoordinationStatus, Coordinator};
use crate::metrics::{Counters, GatewayStatus, Metrics};
use crate::net::Family;
use crate::notify::{Notifier, TargetStatus};
use crate::sendsms::Whitelist;
use crate::util::clock::rfc3339_now;
use crate::util::lock;
use crate::util::waits::{Wait, Waits};

/// Where one family stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    #[default]
    Detecting,
    Verifying,
    Verified,
    Failed,
}

/// One family's state, as `/status` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct FamilyStatus {
    pub(crate) phase: Phase,
    /// The address detection reported last.
    pub(crate) current_ip: Option<IpAddr>,
    pub(crate) verified_ip: Option<IpAddr>,
    pub(crate) verified_at: Option<String>,
    pub(crate) last_detected_at: Option<String>,
    /// Set while detection fails; the last verified state is kept meanwhile.
    pub(crate) detection_error: Option<String>,
    pub(crate) last_error: Option<String>,
}

/// What `/status` answers, and what `/readyz` decides on.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Snapshot {
    pub(crate) ready: bool,
    pub(crate) reason: String,
    pub(crate) families: BTreeMap<Family, FamilyStatus>,
    pub(crate) whitelist: Option<Whitelist>,
    pub(crate) whitelist_seen_at: Option<String>,
    pub(crate) last_error: Option<String>,
    /// Read from the metrics when the snapshot is taken.
    pub(crate) counters: Counters,
    pub(crate) started_at: String,
    /// Absent when `SENDSMS_COORDINATION=none`.
    pub(crate) coordination: Option<CoordinationStatus>,
    /// Absent when the gateway is off.
    pub(crate) gateway: Option<GatewayStatus>,
    /// Each notification target; absent when none is configured.
    pub(crate) notifications: Option<Vec<TargetStatus>>,
    /// The waits in progress that last longer than a moment (a budget, a rate limit, another
    /// member's lease), read when the snapshot is taken.
    pub(crate) waits: Vec<Wait>,
}

/// The answer to `POST /recheck`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct RecheckResult {
    /// False when a recheck ran too recently and this one was answered from it.
    pub(crate) rechecked: bool,
    pub(crate) status: Snapshot,
}

/// Why a recheck was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// `POST /recheck`: within `SENDSMS_RECHECK_MIN_INTERVAL` of the last one, it is answered
    /// from that one.
    Asked,
    /// The API refused a gateway call for this address: answered only by a round that began
    /// after the refusal, since an earlier one may have proven an address this host has left.
    Refused,
}

/// One waiting recheck: the loop answers it when its round ends.
pub(crate) struct RecheckRequest {
    pub(crate) reply: oneshot::Sender<RecheckResult>,
    pub(crate) cause: Cause,
    pub(crate) asked_at: Instant,
}

/// What a held gateway call waits on: readiness, and counters that move when an address is
/// proven or the egress address changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Readiness {
    pub(crate) ready: bool,
    /// Addresses proven (by this process or a fleet record) since the start.
    pub(crate) proofs: u64,
    /// Egress address changes seen since the start.
    pub(crate) changes: u64,
}

/// How many rechecks may wait for the loop at once; more are refused (429).
const RECHECK_QUEUE: usize = 64;

/// State the control loop writes and the servers read. The loop checks in (`beat`) at least
/// once per round; liveness is that heartbeat's age.
pub(crate) struct Shared {
    snapshot: Mutex<Snapshot>,
    heartbeat: Mutex<Instant>,
    /// The longest a round may take: poll interval, detection and verification of every family.
    stale_after: Duration,
    metrics: Arc<Metrics>,
    recheck: mpsc::Sender<RecheckRequest>,
    coordinator: Option<Arc<Coordinator>>,
    readiness: watch::Sender<Readiness>,
    /// Where the gateway listens, once it does.
    gateway: std::sync::OnceLock<std::net::SocketAddr>,
    notifier: Option<Notifier>,
    waits: Arc<Waits>,
}

impl Shared {
    /// The state of a loop that has not detected anything yet, and the queue of its rechecks.
    pub(crate) fn new(
        families: &[Family],
        stale_after: Duration,
        metrics: Arc<Metrics>,
        coordinator: Option<Arc<Coordinator>>,
        notifier: Option<Notifier>,
        waits: Arc<Waits>,
    ) -> (Arc<Self>, mpsc::Receiver<RecheckRequest>) {
        let (recheck, requests) = mpsc::channel(RECHECK_QUEUE);
        let shared = Shared {
            snapshot: Mutex::new(Snapshot {
                ready: false,
                reason: "starting: the egress IP is not detected yet".into(),
                families: families
                    .iter()
                    .map(|f| (*f, FamilyStatus::default()))
                    .collect(),
                whitelist: None,
                whitelist_seen_at: None,
                last_error: None,
                counters: Counters::default(),
                started_at: rfc3339_now(),
                coordination: None,
                gateway: None,
                notifications: None,
                waits: Vec::new(),
            }),
            heartbeat: Mutex::new(Instant::now()),
            stale_after,
            metrics,
            recheck,
            coordinator,
            readiness: watch::Sender::new(Readiness::default()),
            gateway: std::sync::OnceLock::new(),
            notifier,
            waits,
        };
        (Arc::new(shared), requests)
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A copy of the state, with the counters and coordination read now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut snapshot = lock(&self.snapshot).clone();
        snapshot.counters = self.metrics.counters();
        snapshot.coordination = self.coordinator.as_ref().map(|c| c.status());
        snapshot.gateway = self
            .gateway
            .get()
            .map(|listen| self.metrics.gateway_status(*listen));
        snapshot.notifications = self.notifier.as_ref().map(Notifier::status);
        snapshot.waits = self.waits.current();
        snapshot
    }

    /// The gateway listens on `listen`: `/status` shows its counts from now on.
    pub(crate) fn gateway_listening(&self, listen: std::net::SocketAddr) {
        let _ = self.gateway.set(listen);
    }

    /// Follows readiness, proofs and egress changes as the loop publishes them.
    pub(crate) fn readiness(&self) -> watch::Receiver<Readiness> {
        self.readiness.subscribe()
    }

    /// The loop's side: readiness after a change of phase.
    pub(crate) fn publish_ready(&self, ready: bool) {
        self.readiness.send_if_modified(|now| {
            let changed = now.ready != ready;
            now.ready = ready;
            changed
        });
    }

    /// The loop's side: an address was proven whitelisted and working.
    pub(crate) fn publish_proof(&self) {
        self.readiness.send_modify(|now| now.proofs += 1);
    }

    /// The loop's side: the egress address changed.
    pub(crate) fn publish_change(&self) {
        self.readiness.send_modify(|now| now.changes += 1);
    }

    /// Changes the state under its lock (the loop's side).
    pub(crate) fn update<R>(&self, change: impl FnOnce(&mut Snapshot) -> R) -> R {
        change(&mut lock(&self.snapshot))
    }

    /// Changes one family's state.
    pub(crate) fn update_family<R>(
        &self,
        family: Family,
        change: impl FnOnce(&mut FamilyStatus) -> R,
    ) -> R {
        self.update(|snapshot| change(snapshot.families.entry(family).or_default()))
    }

    /// The control loop is alive when it checked in within the longest a round may take.
    pub(crate) fn alive(&self) -> bool {
        lock(&self.heartbeat).elapsed() <= self.stale_after
    }

    pub(crate) fn beat(&self) {
        *lock(&self.heartbeat) = Instant::now();
    }

    /// Queues a recheck; None when too many are waiting already.
    pub(crate) fn request_recheck(&self, cause: Cause) -> Option<oneshot::Receiver<RecheckResult>> {
        let (reply, answer) = oneshot::channel();
        let request = RecheckRequest {
            reply,
            cause,
            asked_at: Instant::now(),
        };
        self.recheck.try_send(request).ok().map(|()| answer)
    }
}
