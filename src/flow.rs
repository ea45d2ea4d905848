//! The whitelist flow as every command runs it: alone or coordinated, under the API budgets, counted once.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::budget::ApiBudget;
use crate::coord::{self, Coordinated, Coordinator, StoreError};
use crate::metrics::Metrics;
use crate::net::Family;
use crate::reconcile::{Api, CheckReport, Proof, ReconcileError, Reconciler, Source};
use crate::secret::Credentials;
use crate::sendsms::{self, CallObserver, Routes, Verdict};
use crate::util::deadline;
use crate::util::waits::Waits;

/// What the flow needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) credentials: Credentials,
    pub(crate) api: sendsms::Settings,
    /// Total time for the add and the verification.
    pub(crate) verify_timeout: Duration,
    /// sendSMS calls per sliding minute for this process, and for the fleet when coordinated.
    pub(crate) api_budget: u32,
    pub(crate) coordination: coord::Settings,
}

/// Builds the API the reconciler calls, with every call passing `observer`: the real routes,
/// or a fake in tests. Called again after an egress change, for fresh connections.
pub(crate) type MakeApi =
    Box<dyn Fn(Arc<dyn CallObserver>) -> Result<Arc<dyn Api>, sendsms::BuildError> + Send + Sync>;

/// The flow cannot be set up: a client or the coordination store is misconfigured.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    #[error(transparent)]
    Client(#[from] sendsms::BuildError),
    #[error("SENDSMS_COORDINATION: {0}")]
    Store(#[from] StoreError),
}

/// Why an IP could not be made usable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnsureError {
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(
        "another member of the fleet ({holder}) has been whitelisting {ip} for {waited:.0?} without sharing a record; trying again later"
    )]
    PeerBusy {
        ip: IpAddr,
        holder: String,
        waited: Duration,
    },
    /// A call was refused for want of budget before the deadline, and nothing disproved the
    /// address: no news, not a failure of the address.
    #[error("{ip} could not be proven in time: the API budget is spent ({cause})")]
    NoBudget { ip: IpAddr, cause: String },
}

/// Every sendSMS call passes the budgets first (this process's, then the fleet's) and is
/// counted after: the one observer of every client.
struct Accounting {
    budget: ApiBudget,
    per_minute: u32,
    coordinator: Option<Arc<Coordinator>>,
    metrics: Arc<Metrics>,
    /// Calls not made because no budget fitted before the deadline.
    refused: std::sync::atomic::AtomicU64,
}

impl Accounting {
    fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl CallObserver for Accounting {
    fn before_call(
        &self,
        _action: &'static str,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async {
            let mut booked = self.budget.acquire().await.map_err(|e| e.to_string());
            if let (Ok(()), Some(coordinator)) = (&booked, &self.coordinator) {
                booked = coordinator.acquire_budget(self.per_minute).await;
            }
            if booked.is_err() {
                self.refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            booked
        })
    }

    fn after_call(&self, action: &'static str, verdict: Verdict) {
        self.metrics.count_api_call(action, verdict.label());
    }
}

/// The one place that decides between coordinating with the fleet and acting alone, and that
/// wires the budgets and the metrics into every API call; `once`, `check` and `run` all use it.
pub(crate) struct Flow {
    reconciler: Reconciler,
    make_api: MakeApi,
    observer: Arc<dyn CallObserver>,
    accounting: Arc<Accounting>,
    coordinator: Option<Arc<Coordinator>>,
    verify_timeout: Duration,
    /// Every wait of the flow (budgets, rate limits, a fleet member's lease), for `/status`.
    waits: Arc<Waits>,
}

impl Flow {
    /// The flow over the real sendSMS routes.
    pub(crate) fn new(settings: &Settings, metrics: Arc<Metrics>) -> Result<Self, BuildError> {
        let (api, credentials) = (settings.api.clone(), settings.credentials.clone());
        let make_api: MakeApi = Box::new(move |observer| {
            let routes = Routes::new(&api, &credentials, Some(observer))?;
            Ok(Arc::new(routes))
        });
        Self::with_api(settings, metrics, make_api)
    }

    /// The flow over any API (tests give a fake).
    pub(crate) fn with_api(
        settings: &Settings,
        metrics: Arc<Metrics>,
        make_api: MakeApi,
    ) -> Result<Self, BuildError> {
        let waits = Arc::new(Waits::default());
        let coordinator = Coordinator::new(
            &settings.coordination,
            &settings.credentials,
            metrics.coordination.clone(),
            Arc::clone(&waits),
        )?;
        let accounting = Arc::new(Accounting {
            budget: ApiBudget::per_minute(settings.api_budget).shown_in(Arc::clone(&waits)),
            per_minute: settings.api_budget,
            coordinator: coordinator.clone(),
            metrics,
            refused: std::sync::atomic::AtomicU64::new(0),
        });
        let observer: Arc<dyn CallObserver> = accounting.clone();
        let api = make_api(Arc::clone(&observer))?;
        Ok(Flow {
            reconciler: Reconciler::new(api, settings.verify_timeout).shown_in(Arc::clone(&waits)),
            make_api,
            observer,
            accounting,
            coordinator,
            verify_timeout: settings.verify_timeout,
            waits,
        })
    }

    /// The budgets and counts every API call passes; the gateway's queries pass them too.
    pub(crate) fn observer(&self) -> Arc<dyn CallObserver> {
        Arc::clone(&self.observer)
    }

    /// The waits in progress, as `/status` lists them.
    pub(crate) fn waits(&self) -> Arc<Waits> {
        Arc::clone(&self.waits)
    }

    pub(crate) fn coordinator(&self) -> Option<&Arc<Coordinator>> {
        self.coordinator.as_ref()
    }

    /// The longest one `ensure` may take: a coordinated member may wait for a lease holder
    /// one lease longer than it would verify alone.
    pub(crate) fn time_limit(&self) -> Duration {
        self.coordinator
            .as_ref()
            .map_or(self.verify_timeout, |c| c.wait_limit())
    }

    /// Fresh clients: after an egress change, a kept-alive connection from the old address
    /// could hang, or worse, "prove" the new address over the old route.
    pub(crate) fn renew_clients(&mut self) -> Result<(), sendsms::BuildError> {
        let api = (self.make_api)(Arc::clone(&self.observer))?;
        self.reconciler = Reconciler::new(api, self.verify_timeout).shown_in(self.waits());
        Ok(())
    }

    /// Makes `ip` whitelisted and verified: alone, or through the fleet's store, where a fresh
    /// record from another member is enough and only the lease holder calls the API. A store
    /// that fails before any call means acting alone. `not_before_ms` refuses fleet records
    /// older than that (a forced recheck wants news).
    pub(crate) async fn ensure(
        &self,
        ip: IpAddr,
        not_before_ms: u64,
    ) -> Result<Proof, EnsureError> {
        let refused = self.accounting.refused();
        let result = deadline::within(self.deadline(), self.ensure_by(ip, not_before_ms)).await;
        match result {
            // The budget, not the API, ended it: say so, so that `run` keeps a verified
            // address rather than dropping it for want of a call.
            Err(EnsureError::Reconcile(
                e @ (ReconcileError::NotVerified { .. } | ReconcileError::ApiUnavailable { .. }),
            )) if self.accounting.refused() > refused => Err(EnsureError::NoBudget {
                ip,
                cause: e.to_string(),
            }),
            other => other,
        }
    }

    /// Every wait of one `ensure` (the budgets, the store, the lease, its renewals) ends by
    /// this: the time limit from now.
    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.time_limit()
    }

    async fn ensure_by(&self, ip: IpAddr, not_before_ms: u64) -> Result<Proof, EnsureError> {
        let Some(coordinator) = &self.coordinator else {
            return Ok(self.reconciler.ensure(ip).await?);
        };
        let started = tokio::time::Instant::now();
        match coordinator
            .ensure(ip, not_before_ms, self.reconciler.ensure(ip))
            .await
        {
            Coordinated::Own(result) => Ok(result?),
            Coordinated::Peer(record) => Ok(Proof {
                ip,
                source: Source::Peer {
                    by: record.by,
                    verified_at_ms: record.verified_at_ms,
                },
                whitelist: None,
                elapsed: started.elapsed(),
            }),
            Coordinated::StoreDown => {
                coordinator.count_fallback();
                Ok(self.reconciler.ensure(ip).await?)
            }
            Coordinated::PeerBusy { holder, waited } => {
                Err(EnsureError::PeerBusy { ip, holder, waited })
            }
        }
    }

    /// `ensure` for the address `detection` finds. Alone, the first read overlaps detection
    /// (one round trip less); coordinated, detection comes first, as the store is keyed by IP.
    pub(crate) async fn ensure_detected<E>(
        &self,
        family: Family,
        detection: impl Future<Output = Result<IpAddr, E>>,
    ) -> Result<Result<Proof, EnsureError>, E> {
        if self.coordinator.is_none() {
            let proof = self.reconciler.ensure_detected(family, detection);
            let proof = deadline::within(self.deadline(), proof).await?;
            return Ok(proof.map_err(EnsureError::from));
        }
        let ip = detection.await?;
        Ok(self.ensure(ip, 0).await)
    }

    /// Read-only: does the key work from here, and does its whitelist list `ip`?
    pub(crate) async fn check(&self, ip: IpAddr) -> Result<CheckReport, ReconcileError> {
        deadline::within(self.deadline(), self.reconciler.check(ip)).await
    }

    /// On shutdown: a lease held mid-work goes back at once, bounded so a store that does not
    /// answer cannot hold up the exit.
    pub(crate) async fn hand_back(&self) {
        if let Some(coordinator) = &self.coordinator {
            let _ = tokio::time::timeout(Duration::from_secs(2), coordinator.hand_back()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ADD, FakeApi, LIST, flow_settings};

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn flow(api: &Arc<FakeApi>, settings: &Settings) -> (Flow, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(settings.coordination.mode.name()));
        let api = Arc::clone(api);
        let make_api: MakeApi = Box::new(move |_| {
            let api: Arc<dyn Api> = api.clone();
            Ok(api)
        });
        let flow = Flow::with_api(settings, Arc::clone(&metrics), make_api).expect("flow");
        (flow, metrics)
    }

    /// A flow whose fake API calls the observer as the real routes do: every call passes the
    /// budgets and is counted.
    fn observed(api: &Arc<FakeApi>, settings: &Settings) -> (Flow, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(settings.coordination.mode.name()));
        let api = Arc::clone(api);
        let make_api: MakeApi = Box::new(move |observer| {
            api.with(|s| s.observer = Some(observer));
            let api: Arc<dyn Api> = api.clone();
            Ok(api)
        });
        let flow = Flow::with_api(settings, Arc::clone(&metrics), make_api).expect("flow");
        (flow, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn a_proof_the_budget_cut_short_is_no_budget_and_one_the_api_denied_is_not() {
        let here = ip("203.0.113.10");
        let mut settings = flow_settings(Duration::from_secs(20));
        settings.api_budget = 3;
        // The address takes effect long after the timeout: each read says "not yet".
        let slow = || {
            let api = FakeApi::new(here, &[]);
            api.with(|s| s.propagation = Duration::from_secs(3600));
            api
        };
        let api = slow();
        let (flow, metrics) = observed(&api, &settings);
        let e = flow.ensure(here, 0).await.expect_err("no proof in time");
        assert!(
            matches!(e, EnsureError::NoBudget { ip, .. } if ip == here),
            "{e}"
        );
        assert_eq!(
            api.with(|s| s.calls.len()),
            3,
            "never more calls than the budget"
        );
        assert_eq!(metrics.counters().api_calls, 3, "each call counted once");
        // With budget to spare the same timeout is the API's doing: not verified.
        settings.api_budget = 600;
        let api = slow();
        let (flow, _) = observed(&api, &settings);
        let e = flow.ensure(here, 0).await.expect_err("no proof in time");
        assert!(
            matches!(
                e,
                EnsureError::Reconcile(ReconcileError::NotVerified { .. })
            ),
            "{e}"
        );
        assert!(api.with(|s| s.calls.len()) > 3);
    }

    #[tokio::test(start_paused = true)]
    async fn every_operation_ends_by_the_time_limit() {
        let here = ip("203.0.113.10");
        let settings = flow_settings(Duration::from_secs(20));
        let api = FakeApi::new(here, &[]);
        api.with(|s| s.propagation = Duration::from_secs(3600));
        let (flow, _) = observed(&api, &settings);
        assert_eq!(flow.time_limit(), Duration::from_secs(20));
        let started = tokio::time::Instant::now();
        let detected = async { Ok::<_, ()>(here) };
        let e = flow
            .ensure_detected(Family::V4, detected)
            .await
            .expect("detected")
            .expect_err("not in time");
        assert!(matches!(e, EnsureError::Reconcile(_)), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(20));
        // A read refused for throttling is retried until the limit, then given up.
        api.with(|s| {
            for _ in 0..100 {
                s.scripted
                    .push_back((LIST, crate::sendsms::ApiError::Http(429)));
            }
        });
        let started = tokio::time::Instant::now();
        let e = flow.check(here).await.expect_err("throttled throughout");
        assert!(matches!(e, ReconcileError::ApiUnavailable { .. }), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn alone_every_call_is_budgeted_and_counted() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[here]);
        let mut settings = flow_settings(Duration::from_secs(30));
        settings.api_budget = 2;
        let (flow, metrics) = flow(&api, &settings);
        // The fake does not pass through the observer; the real routes do. Drive it directly.
        let started = tokio::time::Instant::now();
        for _ in 0..3 {
            flow.observer.before_call(LIST).await.expect("budget");
            flow.observer.after_call(LIST, Verdict::Success);
        }
        assert!(
            started.elapsed() >= Duration::from_secs(60),
            "the third call waited"
        );
        assert_eq!(metrics.counters().api_calls, 3);
        assert!(flow.coordinator().is_none());
        assert_eq!(flow.time_limit(), Duration::from_secs(30));
        // The budget's wait is listed where `/status` reads the flow's waits.
        flow.observer
            .before_call(LIST)
            .await
            .expect("the window's second call");
        let observer = flow.observer();
        let waiting = tokio::spawn(async move { observer.before_call(LIST).await });
        tokio::time::sleep(Duration::from_secs(1)).await;
        let listed = flow.waits().current();
        assert!(
            listed.len() == 1 && listed[0].cause.contains("SENDSMS_API_BUDGET=2"),
            "{listed:?}"
        );
        waiting.await.expect("task").expect("budget");
    }

    #[tokio::test]
    async fn a_fresh_fleet_record_proves_the_ip_without_a_call() {
        let dir = tempfile::tempdir().expect("tempdir");
        let here = ip("203.0.113.10");
        let mut settings = flow_settings(Duration::from_secs(30));
        settings.coordination.mode = coord::Mode::File(dir.path().to_path_buf());
        // The first member proves it and shares the record.
        let first_api = FakeApi::new(here, &[]);
        let (first, first_metrics) = flow(&first_api, &settings);
        let proof = first.ensure(here, 0).await.expect("first member");
        assert!(matches!(proof.source, Source::Added { .. }));
        // The second reads the record.
        let second_api = FakeApi::new(here, &[]);
        let (second, _) = flow(&second_api, &settings);
        let proof = second.ensure(here, 0).await.expect("second member");
        assert!(matches!(proof.source, Source::Peer { .. }), "{proof}");
        assert_eq!(second_api.with(|s| s.calls.len()), 0);
        // A record older than a forced recheck does not answer it.
        let proof = second
            .ensure(here, crate::util::clock::unix_now_ms() + 1)
            .await
            .expect("forced");
        assert!(!matches!(proof.source, Source::Peer { .. }), "{proof}");
        let status = first.coordinator().expect("coordinated").status();
        assert_eq!((status.leases_taken, status.records_written), (1, 1));
        assert!(
            first_metrics
                .encode()
                .contains("coordination_leases_total 1")
        );
    }

    #[tokio::test]
    async fn a_lease_held_mid_proof_is_handed_back_on_shutdown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let here = ip("203.0.113.10");
        let mut settings = flow_settings(Duration::from_secs(30));
        settings.coordination.mode = coord::Mode::File(dir.path().to_path_buf());
        // Never proven: the proof runs until it is stopped.
        let api = FakeApi::new(here, &[]);
        api.with(|s| s.propagation = Duration::from_secs(3600));
        let (flow, _) = flow(&api, &settings);
        let other = Coordinator::new(
            &settings.coordination,
            &settings.credentials,
            None,
            Arc::default(),
        )
        .expect("store")
        .expect("coordinated")
        .renamed("another member");
        let shutdown = async {
            while api.calls(ADD) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            flow.hand_back().await;
        };
        tokio::select! {
            ended = flow.ensure(here, 0) => panic!("the proof cannot end: {ended:?}"),
            () = shutdown => {}
        }
        // The lease is free: the next member leads at once instead of waiting out the lease.
        let work = async { Ok::<(), ()>(()) };
        let led = tokio::time::timeout(Duration::from_secs(1), other.ensure(here, 0, work))
            .await
            .expect("no wait for the lease");
        assert!(matches!(led, Coordinated::Own(Ok(()))));
    }

    #[tokio::test]
    async fn a_failed_store_means_acting_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let blocked = dir.path().join("not-a-directory");
        std::fs::write(&blocked, b"a file where the store's directory should be").expect("file");
        let here = ip("203.0.113.10");
        let mut settings = flow_settings(Duration::from_secs(30));
        settings.coordination.mode = coord::Mode::File(blocked);
        let api = FakeApi::new(here, &[]);
        let (flow, _) = flow(&api, &settings);
        let proof = flow.ensure(here, 0).await.expect("alone");
        assert!(matches!(proof.source, Source::Added { .. }));
        assert_eq!(api.calls(ADD), 1);
        let status = flow.coordinator().expect("coordinated").status();
        assert_eq!(status.fallbacks, 1);
        assert!(!status.store_up);
    }
}
