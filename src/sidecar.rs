//! The control loop of `run`: follow the egress IP for the life of the pod, keep it whitelisted and verified.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::detect::Detector;
use crate::flow::{EnsureError, Flow};
use crate::metrics::Metrics;
use crate::net::Family;
use crate::notify::{Event, Kind, Notifier};
use crate::reconcile::{NOT_IP_LOCKED, Proof, ReconcileError, Source};
use crate::state::{StateFile, VerifiedIp};
use crate::status::{Cause, FamilyStatus, Phase, RecheckRequest, RecheckResult, Shared};
use crate::util::backoff::{Backoff, jittered};
use crate::util::clock::{rfc3339_ms, rfc3339_now, unix_now_ms};

/// What the loop needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) families: Vec<Family>,
    /// How often the egress IP is detected (jittered ±10 %).
    pub(crate) poll_interval: Duration,
    /// How often an unchanged IP is proven again.
    pub(crate) reverify_interval: Duration,
    /// A recheck sooner than this after the last one is answered from it.
    pub(crate) recheck_min_interval: Duration,
    pub(crate) state_file: Option<StateFile>,
}

/// A failed round is tried again after 5 s, doubling, at most the poll interval (and 5 min).
const RETRY: Backoff = Backoff {
    min: Duration::from_secs(5),
    max: Duration::from_secs(5 * 60),
    jitter: 0.0,
};

/// Polls spread ±10 %, so a fleet started together does not poll in step.
const POLL_JITTER: f64 = 0.1;

/// Per-family memory of the control loop.
#[derive(Default)]
struct Tracked {
    verified: Option<VerifiedIp>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// The loop: one round per poll (or recheck) detects every family, and proves a new or
/// stale IP through the flow; readiness and the state file follow each round.
pub(crate) struct Sidecar {
    settings: Settings,
    detector: Detector,
    flow: Flow,
    shared: Arc<Shared>,
    notifier: Option<Notifier>,
    tracked: BTreeMap<Family, Tracked>,
    was_ready: bool,
    /// Some IP was verified, in this process or (by the state file) for this endpoint before:
    /// the API URL has worked, so an answer that does not look like the API is an outage.
    ever_verified: bool,
    /// Said once: the key is not IP-locked.
    warned_not_locked: bool,
    /// Ends the loop: an error no retry can clear (see `verify`).
    fatal: Option<EnsureError>,
}

impl Sidecar {
    /// Builds the loop and the state it shares with the servers; restores verified IPs from
    /// the state file.
    pub(crate) fn new(
        settings: Settings,
        detector: Detector,
        flow: Flow,
        metrics: Arc<Metrics>,
        notifier: Option<Notifier>,
    ) -> (Self, Arc<Shared>, mpsc::Receiver<RecheckRequest>) {
        let families = settings.families.len().max(1) as u32;
        let round = detector.timeout() + flow.time_limit();
        let stale_after = settings.poll_interval.mul_f64(1.0 + POLL_JITTER * 2.0)
            + round * families
            + Duration::from_secs(30);
        let (shared, requests) = Shared::new(
            &settings.families,
            stale_after,
            metrics,
            flow.coordinator().cloned(),
            notifier.clone(),
            flow.waits(),
        );
        let mut tracked: BTreeMap<Family, Tracked> = settings
            .families
            .iter()
            .map(|f| (*f, Tracked::default()))
            .collect();
        if let Some(file) = &settings.state_file {
            for entry in file.load() {
                if let Some(slot) = tracked.get_mut(&entry.family) {
                    tracing::info!(ip = %entry.ip, family = %entry.family, "verified IP restored from the state file");
                    slot.verified = Some(entry);
                }
            }
        }
        let ever_verified = tracked.values().any(|t| t.verified.is_some());
        let sidecar = Sidecar {
            settings,
            detector,
            flow,
            shared: Arc::clone(&shared),
            notifier,
            tracked,
            was_ready: false,
            ever_verified,
            warned_not_locked: false,
            fatal: None,
        };
        (sidecar, shared, requests)
    }

    /// The control loop; returns when `shutdown` resolves, abandoning any round in progress
    /// (the state file is only ever replaced whole, so nothing is left half-written) and
    /// handing back a lease held mid-work. It returns an error only when the API URL never
    /// worked and does not look like the sendSMS API: no retry clears a wrong URL.
    pub(crate) async fn run(
        mut self,
        mut rechecks: mpsc::Receiver<RecheckRequest>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), EnsureError> {
        let mut shutdown = pin!(shutdown);
        let mut next_poll = Instant::now();
        let mut last_recheck: Option<Instant> = None;
        let mut last_round: Option<Instant> = None;
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
                        last_round = Some(Instant::now());
                        self.round(false).await;
                        next_poll = Instant::now() + jittered(self.settings.poll_interval, POLL_JITTER);
                    }
                    Some(first) = rechecks.recv() => {
                        // Everyone who asked while we were busy shares this one answer.
                        let mut waiting = vec![first];
                        while let Ok(more) = rechecks.try_recv() {
                            waiting.push(more);
                        }
                        let asked = waiting.iter().any(|r| r.cause == Cause::Asked)
                            && last_recheck.is_none_or(|t| t.elapsed() >= self.settings.recheck_min_interval);
                        // A refusal seen after the last round began is news that round could not
                        // have answered; the API budget paces these rounds.
                        let refused = waiting.iter().any(|r| {
                            r.cause == Cause::Refused && last_round.is_none_or(|t| r.asked_at >= t)
                        });
                        let due = asked || refused;
                        if due {
                            last_recheck = Some(Instant::now());
                            last_round = last_recheck;
                            self.shared.metrics().rechecks.inc();
                            self.round(true).await;
                            next_poll = Instant::now() + jittered(self.settings.poll_interval, POLL_JITTER);
                        }
                        let status = self.shared.snapshot();
                        for request in waiting {
                            let _ = request.reply.send(RecheckResult { rechecked: due, status: status.clone() });
                        }
                    }
                }
            };
            tokio::select! {
                () = &mut shutdown => break,
                () = work => {}
            }
            if self.fatal.is_some() {
                break;
            }
        }
        tracing::info!("stopping");
        self.flow.hand_back().await;
        self.fatal.take().map_or(Ok(()), Err)
    }

    /// One pass over every family. `force` re-proves even a fresh, unchanged IP.
    async fn round(&mut self, force: bool) {
        self.shared.beat();
        if let Some(coordinator) = self.flow.coordinator().filter(|c| !c.store_up()) {
            coordinator.ping().await;
        }
        let families: Vec<Family> = self.tracked.keys().copied().collect();
        for family in families {
            self.follow(family, force).await;
            self.shared.beat();
        }
        let ready = self.publish_readiness();
        self.notify(|n| n.round(ready));
    }

    fn notify(&self, tell: impl FnOnce(&Notifier)) {
        if let Some(notifier) = &self.notifier {
            tell(notifier);
        }
    }

    async fn follow(&mut self, family: Family, force: bool) {
        let started = Instant::now();
        let detected = self.detector.detect(family).await;
        let metrics = self.shared.metrics();
        metrics.detections.inc();
        let ip = match detected {
            Err(e) => {
                metrics.detection_failures.inc();
                self.shared.update_family(family, |status| {
                    if status.detection_error.is_none() {
                        tracing::warn!(%family, error = %e, "egress IP detection failed; keeping the last verified state");
                    }
                    status.detection_error = Some(e.to_string());
                });
                return;
            }
            Ok(found) => {
                metrics
                    .detection_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.shared.update_family(family, |status| {
                    if status.detection_error.take().is_some() {
                        tracing::info!(%family, ip = %found.ip, "egress IP detection recovered");
                    }
                    status.current_ip = Some(found.ip);
                    status.last_detected_at = Some(rfc3339_now());
                });
                found.ip
            }
        };
        let Some(tracked) = self.tracked.get_mut(&family) else {
            return;
        };
        let previous = tracked.verified.as_ref().map(|v| v.ip);
        let reproof = previous == Some(ip);
        if let Some(entry) = tracked.verified.as_ref().filter(|v| v.ip == ip) {
            if !force && entry.age() < self.settings.reverify_interval {
                // Unchanged and recently proven (perhaps before a restart): no API call at all.
                let verified_at = rfc3339_ms(entry.verified_at.saturating_mul(1000));
                self.shared.update_family(family, |s| {
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
                    if let Some(notifier) = &self.notifier {
                        notifier.event(Event::ip_changed(family, old, ip));
                    }
                    self.shared.metrics().ip_changes.inc();
                    self.shared.publish_change();
                    tracked.failures = 0;
                    tracked.retry_at = None;
                    if let Err(e) = self.flow.renew_clients() {
                        tracing::warn!(error = %e, "fresh API clients could not be built");
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
            self.shared
                .update_family(family, |s| s.phase = Phase::Verifying);
            let _ = self.publish_readiness();
        }
        let started = Instant::now();
        let result = self.flow.ensure(ip, not_before_ms).await;
        if let (true, Err(e @ EnsureError::NoBudget { .. })) = (reproof, &result) {
            // Nothing disproved the address, which was verified: it stays so, and the proof
            // is tried again when the budget has room.
            let delay = self.settings.poll_interval.max(RETRY.min);
            tracing::warn!(%family, %ip, error = %e, retry_in = ?delay, "re-proof postponed");
            if let Some(tracked) = self.tracked.get_mut(&family) {
                tracked.retry_at = Some(Instant::now() + delay);
            }
            return;
        }
        match result {
            Ok(proof) => {
                self.shared
                    .metrics()
                    .verification_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.proven(family, proof);
            }
            Err(e @ EnsureError::Reconcile(ReconcileError::NotTheApi(_)))
                if !self.ever_verified =>
            {
                self.fatal = Some(e);
            }
            Err(e) => {
                let Some(tracked) = self.tracked.get_mut(&family) else {
                    return;
                };
                tracked.failures = tracked.failures.saturating_add(1);
                let delay = RETRY
                    .after(tracked.failures)
                    .min(self.settings.poll_interval.max(RETRY.min));
                tracked.retry_at = Some(Instant::now() + delay);
                tracked.verified = None;
                tracing::warn!(%family, %ip, error = %e, retry_in = ?delay, "whitelisting failed");
                if let Some(notifier) = &self.notifier {
                    notifier.event(
                        Event::new(
                            Kind::VerificationFailed,
                            format!("{ip} could not be whitelisted and verified: {e}"),
                        )
                        .about(family, ip),
                    );
                }
                self.shared.metrics().verification_failures.inc();
                self.shared.update(|snap| {
                    snap.last_error = Some(e.to_string());
                    let status = snap.families.entry(family).or_default();
                    status.phase = Phase::Failed;
                    status.verified_ip = None;
                    status.last_error = Some(format!("{e} (retrying in {}s)", delay.as_secs()));
                });
            }
        }
    }

    /// Records a proof: the family is verified, the metrics and the state file follow.
    fn proven(&mut self, family: Family, proof: Proof) {
        let ip = proof.ip;
        let entry = match &proof.source {
            // Re-verified when the fleet's record ages out, not when this member's copy does.
            Source::Peer { verified_at_ms, .. } => VerifiedIp {
                family,
                ip,
                verified_at: verified_at_ms / 1000,
            },
            Source::AlreadyListed => {
                tracing::info!(%family, %ip, "verified: already whitelisted");
                VerifiedIp::now(ip)
            }
            Source::Added { .. } => {
                tracing::info!(%family, %ip, "whitelisted and verified");
                self.notify(|n| {
                    n.event(Event::new(Kind::Whitelisted, proof.to_string()).about(family, ip))
                });
                VerifiedIp::now(ip)
            }
            Source::NotIpLocked => {
                if !self.warned_not_locked {
                    tracing::warn!(%family, %ip, "{NOT_IP_LOCKED}");
                    self.warned_not_locked = true;
                }
                VerifiedIp::now(ip)
            }
        };
        self.ever_verified = true;
        let metrics = self.shared.metrics();
        metrics.verifications.inc();
        self.shared.publish_proof();
        metrics.verified(family.as_str(), entry.verified_at);
        if let Some(whitelist) = &proof.whitelist {
            metrics
                .whitelist_size
                .set(i64::try_from(whitelist.len()).unwrap_or(i64::MAX));
        }
        let verified_at = rfc3339_ms(entry.verified_at.saturating_mul(1000));
        self.shared.update(|snap| {
            if let Some(whitelist) = proof.whitelist {
                snap.whitelist = Some(whitelist);
                snap.whitelist_seen_at = Some(rfc3339_now());
            }
            let status = snap.families.entry(family).or_default();
            status.phase = Phase::Verified;
            status.verified_ip = Some(ip);
            status.verified_at = Some(verified_at);
            status.last_error = None;
        });
        if let Some(tracked) = self.tracked.get_mut(&family) {
            tracked.verified = Some(entry);
            tracked.failures = 0;
            tracked.retry_at = None;
        }
        self.save_state();
    }

    fn save_state(&self) {
        let Some(file) = &self.settings.state_file else {
            return;
        };
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

    /// Works out readiness from every family's state, publishes it, and says whether it is ready.
    fn publish_readiness(&mut self) -> bool {
        let (ready, reason) = self.shared.update(|snap| {
            let problems: Vec<String> = snap
                .families
                .iter()
                .filter_map(|(family, status)| problem(*family, status))
                .collect();
            snap.ready = problems.is_empty();
            snap.reason = if snap.ready {
                let ips: Vec<String> = snap
                    .families
                    .iter()
                    .filter_map(|(f, s)| s.verified_ip.map(|ip| format!("{f} {ip}")))
                    .collect();
                format!("ready: {} whitelisted and verified", ips.join(", "))
            } else {
                problems.join("; ")
            };
            (snap.ready, snap.reason.clone())
        });
        self.shared.metrics().ready.set(i64::from(ready));
        self.shared.publish_ready(ready);
        if ready != self.was_ready {
            tracing::info!(ready, %reason, "{}", if ready { "ready" } else { "not ready" });
            self.was_ready = ready;
            self.notify(|n| n.readiness(ready, &reason));
        }
        ready
    }
}

/// Why one family keeps the sidecar unready, or None when it is verified at its current IP.
fn problem(family: Family, status: &FamilyStatus) -> Option<String> {
    let shown = |ip: Option<IpAddr>| ip.map(|i| i.to_string()).unwrap_or_default();
    match (status.phase, status.current_ip, status.verified_ip) {
        (Phase::Verified, Some(current), Some(verified)) if current == verified => None,
        (Phase::Detecting, None, _) => Some(format!("{family}: egress IP not detected yet")),
        (Phase::Failed, ip, _) => Some(format!(
            "{family}: {} not whitelisted: {}",
            shown(ip),
            status.last_error.as_deref().unwrap_or("failed")
        )),
        (_, ip, _) => Some(format!("{family}: {} not verified yet", shown(ip))),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::detect;
    use crate::testing::{ADD, FakeApi, FakeSource, LIST, flow_over};

    const VERIFY: Duration = Duration::from_secs(30);

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    struct Rig {
        sidecar: Sidecar,
        shared: Arc<Shared>,
        rechecks: Option<mpsc::Receiver<RecheckRequest>>,
        source: Arc<FakeSource>,
        api: Arc<FakeApi>,
        builds: Arc<AtomicU32>,
    }

    /// A sidecar over one detection source (quorum 1) and the API model, polling every minute.
    fn rig(here: IpAddr, listed: &[IpAddr]) -> Rig {
        let source = FakeSource::answering(here);
        let api = FakeApi::new(here, listed);
        let metrics = Arc::new(Metrics::new(None));
        let (flow, builds) = flow_over(&api, Arc::clone(&metrics), VERIFY);
        let detection = detect::Settings {
            providers: Vec::new(),
            quorum: 1,
            families: vec![Family::V4],
            allow_non_public: true,
            timeout: Duration::from_secs(5),
        };
        let detector = Detector::with_sources(
            &detection,
            [FakeSource::spec(
                "https://echo.example.net/ip#echo",
                &source,
            )],
        );
        let settings = Settings {
            families: vec![Family::V4],
            poll_interval: Duration::from_secs(60),
            reverify_interval: Duration::from_secs(3600),
            recheck_min_interval: Duration::from_secs(10),
            state_file: None,
        };
        let (sidecar, shared, rechecks) = Sidecar::new(settings, detector, flow, metrics, None);
        Rig {
            sidecar,
            shared,
            rechecks: Some(rechecks),
            source,
            api,
            builds,
        }
    }

    fn move_egress(rig: &Rig, to: IpAddr) {
        rig.source.set(to);
        rig.api.with(|s| s.egress = to);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_ip_is_whitelisted_then_an_unchanged_one_costs_nothing() {
        let here = ip("203.0.113.10");
        let mut rig = rig(here, &[]);
        assert!(!rig.shared.snapshot().ready);
        rig.sidecar.round(false).await;
        let snapshot = rig.shared.snapshot();
        assert!(snapshot.ready, "{}", snapshot.reason);
        assert_eq!(rig.api.calls(ADD), 1);
        let calls = rig.api.with(|s| s.calls.len());
        rig.sidecar.round(false).await;
        assert_eq!(
            rig.api.with(|s| s.calls.len()),
            calls,
            "an idle round calls nothing"
        );
        assert_eq!(snapshot.counters.verifications, 1);
        assert_eq!(rig.source.asked(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_egress_change_rebuilds_the_clients_and_is_proven() {
        let (old, new) = (ip("203.0.113.10"), ip("203.0.113.99"));
        let mut rig = rig(old, &[old]);
        rig.sidecar.round(false).await;
        assert!(rig.shared.snapshot().ready);
        assert_eq!(rig.builds.load(Ordering::SeqCst), 1);
        move_egress(&rig, new);
        rig.api.with(|s| s.propagation = Duration::from_secs(3));
        rig.sidecar.round(false).await;
        let snapshot = rig.shared.snapshot();
        assert!(snapshot.ready, "{}", snapshot.reason);
        assert!(
            snapshot.reason.contains("203.0.113.99"),
            "{}",
            snapshot.reason
        );
        assert_eq!(
            rig.builds.load(Ordering::SeqCst),
            2,
            "fresh clients after the change"
        );
        assert_eq!(snapshot.counters.ip_changes, 1);
        assert_eq!(rig.api.calls(ADD), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_drops_while_a_changed_ip_is_being_verified() {
        let (old, new) = (ip("203.0.113.10"), ip("203.0.113.99"));
        let mut rig = rig(old, &[old]);
        rig.sidecar.round(false).await;
        move_egress(&rig, new);
        rig.api.with(|s| s.propagation = Duration::from_secs(3));
        let shared = Arc::clone(&rig.shared);
        let watch = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            shared.snapshot()
        };
        let ((), during) = tokio::join!(rig.sidecar.round(false), watch);
        assert!(!during.ready);
        assert!(
            during.reason.contains("203.0.113.99 not verified yet"),
            "{}",
            during.reason
        );
        assert!(shared.snapshot().ready);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_round_is_retried_with_backoff_and_keeps_no_verified_ip() {
        let here = ip("203.0.113.10");
        let mut rig = rig(here, &[]);
        rig.api.with(|s| s.bootstrap_authorized = false);
        rig.sidecar.round(false).await;
        let snapshot = rig.shared.snapshot();
        assert!(!snapshot.ready);
        assert_eq!(snapshot.families[&Family::V4].phase, Phase::Failed);
        assert!(
            snapshot.reason.contains("retrying in 5s"),
            "{}",
            snapshot.reason
        );
        // Within the backoff, a poll round does not try again.
        rig.sidecar.round(false).await;
        assert_eq!(rig.api.calls(ADD), 1);
        tokio::time::sleep(Duration::from_secs(5)).await;
        rig.api.with(|s| s.bootstrap_authorized = true);
        rig.sidecar.round(false).await;
        assert!(rig.shared.snapshot().ready);
        assert_eq!(rig.api.calls(ADD), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_url_that_never_worked_and_is_not_the_api_ends_the_loop() {
        let here = ip("203.0.113.10");
        let mut rig = rig(here, &[here]);
        let not_the_api =
            || crate::sendsms::ApiError::NotTheApi("http://127.0.0.1:9/jsn: HTTP 404".into());
        rig.api
            .with(|s| s.scripted.push_back((LIST, not_the_api())));
        let rechecks = rig.rechecks.take().expect("receiver");
        // Bounded (in the paused clock's time): a loop that never ends fails here, at once.
        let ended = tokio::time::timeout(
            Duration::from_secs(3600),
            rig.sidecar.run(rechecks, std::future::pending()),
        )
        .await
        .expect("the loop ends within an hour");
        let e = ended.expect_err("a URL that never worked ends `run`");
        assert!(e.to_string().contains("SENDSMS_API_URL"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_url_that_worked_before_only_fails_the_round() {
        let here = ip("203.0.113.10");
        let mut rig = rig(here, &[here]);
        rig.sidecar.round(false).await;
        rig.api.with(|s| {
            s.scripted.push_back((
                LIST,
                crate::sendsms::ApiError::NotTheApi("http://127.0.0.1:9/json: HTTP 404".into()),
            ))
        });
        rig.sidecar.round(true).await;
        let snapshot = rig.shared.snapshot();
        assert_eq!(snapshot.families[&Family::V4].phase, Phase::Failed);
        assert!(rig.sidecar.fatal.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_that_is_not_ip_locked_is_ready_without_a_write() {
        let here = ip("203.0.113.10");
        let mut rig = rig(here, &[ip("198.51.100.1")]);
        rig.api.with(|s| s.cloud = true);
        rig.sidecar.round(false).await;
        assert!(rig.shared.snapshot().ready);
        assert_eq!(rig.api.calls(ADD), 0);
        assert!(rig.sidecar.warned_not_locked);
    }

    #[tokio::test(start_paused = true)]
    async fn a_detection_outage_keeps_the_last_verified_state() {
        let here = ip("203.0.113.10");
        let mut rig = rig(here, &[here]);
        rig.sidecar.round(false).await;
        rig.source.fail("down");
        rig.sidecar.round(false).await;
        let snapshot = rig.shared.snapshot();
        assert!(snapshot.ready, "{}", snapshot.reason);
        assert!(snapshot.families[&Family::V4].detection_error.is_some());
        assert_eq!(snapshot.counters.detection_failures, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_rechecks_share_one_round() {
        let here = ip("203.0.113.10");
        let mut rig = rig(here, &[here]);
        let rechecks = rig.rechecks.take().expect("receiver");
        let answers: Vec<_> = (0..5)
            .map(|_| rig.shared.request_recheck(Cause::Asked).expect("queued"))
            .collect();
        let shared = Arc::clone(&rig.shared);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let callers = async {
            let mut results = Vec::new();
            for answer in answers {
                results.push(answer.await.expect("answered"));
            }
            let _ = stop.send(());
            results
        };
        let (ended, results) = tokio::join!(
            rig.sidecar.run(rechecks, async {
                let _ = stopped.await;
            }),
            callers
        );
        ended.expect("stopped by the signal, not by an error");
        assert!(
            results.iter().all(|r| r.rechecked),
            "every waiting caller shares the round"
        );
        assert_eq!(shared.metrics().rechecks.get(), 1);
        assert!(
            rig.api.calls(LIST) <= 2,
            "one round, perhaps after the first poll"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_recheck_within_the_min_interval_is_answered_without_a_call() {
        let here = ip("203.0.113.10");
        let mut rig = rig(here, &[here]);
        let rechecks = rig.rechecks.take().expect("receiver");
        let shared = Arc::clone(&rig.shared);
        let api = Arc::clone(&rig.api);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let callers = async {
            // The loop's first poll goes first; rechecks come after it.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut seen = Vec::new();
            for wait in [0, 5, 5] {
                tokio::time::sleep(Duration::from_secs(wait)).await;
                let reads = api.calls(LIST);
                let answer = shared.request_recheck(Cause::Asked).expect("queued").await;
                let rechecked = answer.expect("answered").rechecked;
                seen.push((rechecked, api.calls(LIST) - reads));
            }
            let _ = stop.send(());
            seen
        };
        let (ended, seen) = tokio::join!(
            rig.sidecar.run(rechecks, async {
                let _ = stopped.await;
            }),
            callers
        );
        ended.expect("stopped by the signal");
        // SENDSMS_RECHECK_MIN_INTERVAL is 10 s here: the one 5 s after a recheck costs nothing,
        // the one 10 s after it runs a round again.
        assert_eq!(seen, [(true, 1), (false, 0), (true, 1)]);
        assert_eq!(rig.shared.metrics().rechecks.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_answered_by_a_round_begun_after_it_whatever_the_min_interval() {
        let here = ip("203.0.113.10");
        let mut rig = rig(here, &[here]);
        let rechecks = rig.rechecks.take().expect("receiver");
        let shared = Arc::clone(&rig.shared);
        let mut readiness = shared.readiness();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let ask = |cause| {
            let answer = shared.request_recheck(cause).expect("queued");
            async move { answer.await.expect("answered").rechecked }
        };
        let callers = async {
            let first = ask(Cause::Asked).await;
            let proofs = readiness.borrow_and_update().proofs;
            let again = ask(Cause::Asked).await;
            let refused = ask(Cause::Refused).await;
            let after = readiness.borrow_and_update().proofs;
            let _ = stop.send(());
            (first, again, refused, proofs, after)
        };
        let (ended, (first, again, refused, proofs, after)) = tokio::join!(
            rig.sidecar.run(rechecks, async {
                let _ = stopped.await;
            }),
            callers
        );
        assert!(ended.is_ok());
        assert!(first, "the first recheck runs a round");
        assert!(
            !again,
            "within the min interval, a recheck is answered from the last"
        );
        assert!(refused, "a refusal runs a round of its own");
        assert!(
            after > proofs,
            "that round proved the address again: {proofs} -> {after}"
        );
        assert!(readiness.borrow().ready);
        assert_eq!(shared.metrics().rechecks.get(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unchanged_ip_is_proven_again_after_the_reverify_interval() {
        let here = ip("203.0.113.10");
        let mut rig = rig(here, &[here]);
        rig.sidecar.round(false).await;
        assert_eq!(rig.api.calls(LIST), 1);
        // The state's age is wall-clock time: pretend the proof is an hour and a bit old.
        if let Some(verified) = rig
            .sidecar
            .tracked
            .get_mut(&Family::V4)
            .and_then(|t| t.verified.as_mut())
        {
            verified.verified_at -= 3601;
        }
        rig.sidecar.round(false).await;
        assert_eq!(rig.api.calls(LIST), 2);
        assert_eq!(rig.api.calls(ADD), 0);
        assert!(rig.shared.snapshot().ready);
    }
}
