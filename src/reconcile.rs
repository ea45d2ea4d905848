//! The reconciler: make one egress IP whitelisted and prove it from this host; shared by every command.

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::net::Family;
use crate::sendsms::{Added, ApiError, Routes, Verdict, Whitelist};
use crate::util::backoff::Backoff;
use crate::util::clock::rfc3339_ms;
use crate::util::deadline;
use crate::util::waits::Waits;

/// A boxed future, so the API can be a trait object (the real routes, or a fake in tests).
pub(crate) type ApiFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// The two whitelist calls the reconciler makes, and what it needs to know of their routes.
///
/// Contract: `list_ips` calls `token_list_ips` with the locked key over the direct route of
/// `family`, exactly as the SMS-sending app would; it only reads, so it may be retried.
/// `add_ip` calls `token_add_ip` once through the bootstrap route; "already listed" is
/// `Ok(Added::Duplicate)`. Neither retries by itself: the reconciler decides on `ApiError::verdict`.
pub(crate) trait Api: Send + Sync {
    fn list_ips(&self, family: Family) -> ApiFuture<'_, Whitelist>;
    fn add_ip(&self, ip: IpAddr) -> ApiFuture<'_, Added>;
    /// How the bootstrap route is described in errors, such as "bootstrap proxy http://b:3128".
    fn bootstrap_route(&self) -> String;
    /// True when no bootstrap path is configured and writes go the direct route.
    fn bootstrap_is_direct(&self) -> bool;
    /// True when the bootstrap path is a proxy (`SENDSMS_BOOTSTRAP_PROXY`).
    fn bootstrap_via_proxy(&self) -> bool {
        false
    }
}

impl Api for Routes {
    fn list_ips(&self, family: Family) -> ApiFuture<'_, Whitelist> {
        Box::pin(self.direct(family).list_ips())
    }

    fn add_ip(&self, ip: IpAddr) -> ApiFuture<'_, Added> {
        Box::pin(self.bootstrap().add_ip(ip))
    }

    fn bootstrap_route(&self) -> String {
        self.bootstrap().route().to_owned()
    }

    fn bootstrap_is_direct(&self) -> bool {
        Routes::bootstrap_is_direct(self)
    }

    fn bootstrap_via_proxy(&self) -> bool {
        Routes::bootstrap_via_proxy(self)
    }
}

/// Delays between attempts: exponential with jitter, so a fleet that lost its IP together does
/// not retry in step.
const RETRY: Backoff = Backoff {
    min: Duration::from_millis(500),
    max: Duration::from_secs(10),
    jitter: 0.5,
};

/// A rate-limit answer waits at least this long: the provider counts calls per minute.
const RATE_LIMITED_PAUSE: Duration = Duration::from_secs(6);

/// A bootstrap path that cannot be connected to (a proxy that refuses, a name that does not
/// resolve) does not start working while verification waits: this many tries, one backoff step
/// apart, then it is reported instead of waiting out the verify timeout.
const UNREACHABLE_TRIES: u32 = 3;

/// What `once` and `run` warn, once, when the key works from an address it does not list.
pub(crate) const NOT_IP_LOCKED: &str = "the key works from this host although its whitelist does \
     not list this address, so it is not IP-locked (a Cloud key): it needs no whitelisting, nothing \
     is written, and this tool is not needed for this key";

/// How an IP came to be proven usable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The direct route already worked and listed the IP: nothing was written.
    AlreadyListed,
    /// `token_add_ip` went through the bootstrap route (`duplicate`: the API said it was listed
    /// already), then `checks` direct reads proved it.
    Added { duplicate: bool, checks: u32 },
    /// Another member of the fleet proved it for the same egress IP and shared the record.
    Peer { by: String, verified_at_ms: u64 },
    /// The direct route worked from an address the whitelist does not list: the key is not
    /// IP-locked (a Cloud key), so nothing was written.
    NotIpLocked,
}

/// The one result of the whitelist flow: `ip` works for the key from here.
#[derive(Clone, Debug)]
pub(crate) struct Proof {
    pub(crate) ip: IpAddr,
    pub(crate) source: Source,
    /// The whitelist as this process read it; None when a fleet record proved the IP.
    pub(crate) whitelist: Option<Whitelist>,
    pub(crate) elapsed: Duration,
}

impl fmt::Display for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let ip = self.ip;
        match &self.source {
            Source::AlreadyListed => write!(
                f,
                "{ip} is already whitelisted and the key works from it; nothing written ({secs:.2}s)"
            ),
            Source::Added { duplicate, checks } => {
                write!(
                    f,
                    "{ip} {} and verified from this host after {checks} check{} ({secs:.2}s)",
                    if *duplicate {
                        "was already on the whitelist (API said duplicate)"
                    } else {
                        "whitelisted"
                    },
                    if *checks == 1 { "" } else { "s" },
                )?;
                if let Some(whitelist) = &self.whitelist {
                    write!(f, "; whitelist: {whitelist}")?;
                }
                Ok(())
            }
            Source::Peer { by, verified_at_ms } => write!(
                f,
                "{ip} was verified by fleet member {by} at {}; nothing written",
                rfc3339_ms(*verified_at_ms)
            ),
            Source::NotIpLocked => write!(
                f,
                "{ip} is not on the whitelist, yet the key works from it: the key is not \
                 IP-locked; nothing written ({secs:.2}s)"
            ),
        }
    }
}

/// What `check` found, read-only.
#[derive(Clone, Debug)]
pub(crate) struct CheckReport {
    pub(crate) ip: IpAddr,
    /// None when the key was refused from here, so the whitelist could not be read.
    pub(crate) whitelist: Option<Whitelist>,
    pub(crate) refusal: Option<String>,
}

impl CheckReport {
    /// The key works from here (for an IP-locked key, that is: its whitelist lists the IP).
    pub(crate) fn usable(&self) -> bool {
        self.whitelist.is_some()
    }

    /// The key works from here although its whitelist does not list the IP: not IP-locked.
    pub(crate) fn not_ip_locked(&self) -> bool {
        self.whitelist.as_ref().is_some_and(|w| !w.covers(self.ip))
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    #[error("the API refused token_add_ip for {ip} through {path}: {cause}. {hint}")]
    BootstrapRefused {
        ip: IpAddr,
        path: String,
        cause: ApiError,
        hint: &'static str,
    },
    #[error(
        "token_add_ip for {ip} was not sent: {path} cannot be reached ({cause}). Tried \
         {UNREACHABLE_TRIES} times in {waited:.1?} instead of waiting out SENDSMS_VERIFY_TIMEOUT, \
         as this does not clear by waiting. {hint}"
    )]
    BootstrapUnreachable {
        ip: IpAddr,
        path: String,
        cause: ApiError,
        waited: Duration,
        hint: &'static str,
    },
    /// The endpoint answered, but not as the sendSMS API: a configuration error.
    #[error("{0}")]
    NotTheApi(ApiError),
    #[error("{ip} was not proven usable within {waited:.0?}: {last}")]
    NotVerified {
        ip: IpAddr,
        waited: Duration,
        last: String,
    },
    #[error("the API stayed unusable during {during} for {waited:.0?}: {cause}")]
    ApiUnavailable {
        during: &'static str,
        waited: Duration,
        cause: String,
    },
}

/// One attempt's verdict for `with_backoff`.
enum Attempt<T> {
    Done(T),
    Again { why: String, rate_limited: bool },
    Stop(ApiError),
}

enum Exhausted {
    Stopped(ApiError),
    OutOfTime { last: String },
}

/// Makes one egress IP whitelisted and proves it from this host: read directly, write through
/// the bootstrap path only when needed, then read directly under backoff until the key works
/// and lists the IP, or the verify timeout runs out. Only reads are ever repeated; a write is
/// repeated only after the API refused it (rate limit, transient fault), never after success.
pub(crate) struct Reconciler {
    api: Arc<dyn Api>,
    verify_timeout: Duration,
    waits: Arc<Waits>,
}

impl Reconciler {
    pub(crate) fn new(api: Arc<dyn Api>, verify_timeout: Duration) -> Self {
        Reconciler {
            api,
            verify_timeout,
            waits: Arc::default(),
        }
    }

    /// Shows its pauses (a rate limit, a backoff step) in `waits`.
    pub(crate) fn shown_in(mut self, waits: Arc<Waits>) -> Self {
        self.waits = waits;
        self
    }

    /// Steps 3 to 5 of the flow: read from here, write through the bootstrap path only when
    /// needed, then prove from here under backoff until `verify_timeout` runs out.
    pub(crate) async fn ensure(&self, ip: IpAddr) -> Result<Proof, ReconcileError> {
        let started = Instant::now();
        let first_read = self.api.list_ips(Family::of(ip)).await;
        self.ensure_after_read(ip, first_read, started).await
    }

    /// `ensure` with the first read made while `detection` runs: the read does not need the
    /// address, so a start costs one round trip less (the floor is max(detect, read) + add + read).
    /// A detection error is returned as is; the read it overlapped is then wasted, one call.
    pub(crate) async fn ensure_detected<E>(
        &self,
        family: Family,
        detection: impl Future<Output = Result<IpAddr, E>>,
    ) -> Result<Result<Proof, ReconcileError>, E> {
        let started = Instant::now();
        let (detected, first_read) = tokio::join!(detection, self.api.list_ips(family));
        let ip = detected?;
        Ok(self.ensure_after_read(ip, first_read, started).await)
    }

    async fn ensure_after_read(
        &self,
        ip: IpAddr,
        first_read: Result<Whitelist, ApiError>,
        started: Instant,
    ) -> Result<Proof, ReconcileError> {
        let deadline = deadline::clamp(started + self.verify_timeout);
        let family = Family::of(ip);
        let proof = |source, whitelist| Proof {
            ip,
            source,
            whitelist: Some(whitelist),
            elapsed: started.elapsed(),
        };

        let first_read = match first_read {
            // Throttled or unanswered, the read says nothing about the whitelist: ask again
            // rather than spend a write (and its proof) on an address that may be listed.
            Err(e) if e.verdict().is_retryable() => {
                tracing::info!(%ip, cause = %e, "no answer about the whitelist yet; reading again");
                match self
                    .read_until_answered(family, deadline, Some(e.clone()))
                    .await
                {
                    Ok(read) => read,
                    Err(Exhausted::Stopped(e)) => Err(e),
                    Err(Exhausted::OutOfTime { .. }) => Err(e),
                }
            }
            read => read,
        };
        match first_read {
            Ok(whitelist) if whitelist.covers(ip) => {
                tracing::info!(%ip, "already whitelisted; the key works from this host");
                return Ok(proof(Source::AlreadyListed, whitelist));
            }
            // A Default key is refused from every address its whitelist does not list; one that
            // answers from here without listing this address is not locked, and a write would
            // add nothing but an entry to prune.
            Ok(whitelist) => {
                tracing::info!(%ip, whitelist = %whitelist, "the key works here but does not list this IP: it is not IP-locked");
                return Ok(proof(Source::NotIpLocked, whitelist));
            }
            Err(e @ ApiError::NotTheApi(_)) => return Err(ReconcileError::NotTheApi(e)),
            // A status no success or refusal explains (an account suspended, say): the
            // account is in a state this tool does not know, so nothing is written.
            Err(e) if e.verdict() == Verdict::Unexpected => {
                return Err(ReconcileError::ApiUnavailable {
                    during: "token_list_ips",
                    waited: started.elapsed(),
                    cause: e.to_string(),
                });
            }
            Err(e) => tracing::info!(%ip, cause = %e, "the key does not work from this host yet"),
        }

        let (direct, via_proxy) = (
            self.api.bootstrap_is_direct(),
            self.api.bootstrap_via_proxy(),
        );
        let mut unreachable = 0u32;
        let added = self
            .with_backoff(deadline, async || match self.api.add_ip(ip).await {
                Ok(added) => Attempt::Done(added),
                Err(e @ ApiError::Unreachable(_)) if !direct => {
                    unreachable += 1;
                    if unreachable >= UNREACHABLE_TRIES {
                        Attempt::Stop(e)
                    } else {
                        retry_or_stop(e)
                    }
                }
                Err(e) => retry_or_stop(e),
            })
            .await
            .map_err(|exhausted| match exhausted {
                Exhausted::Stopped(cause) if cause.verdict() == Verdict::Unexpected => {
                    ReconcileError::ApiUnavailable {
                        during: "token_add_ip",
                        waited: started.elapsed(),
                        cause: cause.to_string(),
                    }
                }
                Exhausted::Stopped(cause @ ApiError::NotTheApi(_)) => {
                    ReconcileError::NotTheApi(cause)
                }
                Exhausted::Stopped(cause @ ApiError::Unreachable(_)) => {
                    ReconcileError::BootstrapUnreachable {
                        ip,
                        path: self.api.bootstrap_route(),
                        cause,
                        waited: started.elapsed(),
                        hint: if via_proxy {
                            "Check the proxy's host name and port in SENDSMS_BOOTSTRAP_PROXY, and \
                             that it is running and accepts connections from this host."
                        } else {
                            "Check that SENDSMS_BOOTSTRAP_BIND is an address of this host with a \
                             route to the API."
                        },
                    }
                }
                Exhausted::Stopped(cause) => ReconcileError::BootstrapRefused {
                    ip,
                    path: self.api.bootstrap_route(),
                    hint: refusal_hint(direct, &cause),
                    cause,
                },
                Exhausted::OutOfTime { last } => ReconcileError::ApiUnavailable {
                    during: "token_add_ip",
                    waited: started.elapsed(),
                    cause: last,
                },
            })?;
        tracing::info!(%ip, path = %self.api.bootstrap_route(), ?added, "token_add_ip accepted");

        let mut checks = 0u32;
        let verified = self
            .with_backoff(deadline, async || {
                checks += 1;
                match self.api.list_ips(family).await {
                    Ok(whitelist) if whitelist.covers(ip) => Attempt::Done(whitelist),
                    Ok(whitelist) => Attempt::Again {
                        why: format!(
                            "the key works but the whitelist does not list {ip} yet: {whitelist}"
                        ),
                        rate_limited: false,
                    },
                    // Right after the add, a refusal from here is the provider still propagating.
                    Err(e) if e.verdict() == Verdict::AuthRefused => Attempt::Again {
                        why: format!("the key is still refused from this host: {e}"),
                        rate_limited: false,
                    },
                    Err(e) => retry_or_stop(e),
                }
            })
            .await;
        match verified {
            Ok(whitelist) => {
                let duplicate = added == Added::Duplicate;
                let proof = proof(Source::Added { duplicate, checks }, whitelist);
                tracing::info!(%ip, checks, elapsed = ?proof.elapsed, "verified from this host");
                Ok(proof)
            }
            Err(Exhausted::Stopped(cause @ ApiError::NotTheApi(_))) => {
                Err(ReconcileError::NotTheApi(cause))
            }
            Err(Exhausted::Stopped(cause)) => Err(ReconcileError::NotVerified {
                ip,
                waited: started.elapsed(),
                last: cause.to_string(),
            }),
            Err(Exhausted::OutOfTime { last }) => Err(ReconcileError::NotVerified {
                ip,
                waited: started.elapsed(),
                last,
            }),
        }
    }

    /// Read-only: does the key work from here, and does its whitelist list `ip`?
    pub(crate) async fn check(&self, ip: IpAddr) -> Result<CheckReport, ReconcileError> {
        let started = Instant::now();
        let deadline = deadline::clamp(started + self.verify_timeout);
        let report = |whitelist, refusal| CheckReport {
            ip,
            whitelist,
            refusal,
        };
        match self
            .read_until_answered(Family::of(ip), deadline, None)
            .await
        {
            Ok(Ok(whitelist)) => Ok(report(Some(whitelist), None)),
            Err(Exhausted::Stopped(e @ ApiError::NotTheApi(_))) => {
                Err(ReconcileError::NotTheApi(e))
            }
            Ok(Err(refusal)) | Err(Exhausted::Stopped(refusal)) => {
                Ok(report(None, Some(refusal.to_string())))
            }
            Err(Exhausted::OutOfTime { last }) => Err(ReconcileError::ApiUnavailable {
                during: "token_list_ips",
                waited: started.elapsed(),
                cause: last,
            }),
        }
    }

    /// `token_list_ips` from here until it answers: the whitelist, or a refusal of the key
    /// (itself an answer); throttling and transient failures are retried until `deadline`.
    /// `failed`: a read that already failed, which counts as the first attempt, so its pause
    /// (six seconds after a rate limit) is kept before the next one.
    async fn read_until_answered(
        &self,
        family: Family,
        deadline: Instant,
        mut failed: Option<ApiError>,
    ) -> Result<Result<Whitelist, ApiError>, Exhausted> {
        self.with_backoff(deadline, async || {
            let read = match failed.take() {
                Some(e) => Err(e),
                None => self.api.list_ips(family).await,
            };
            match read {
                Ok(whitelist) => Attempt::Done(Ok(whitelist)),
                Err(e) if e.verdict() == Verdict::AuthRefused => Attempt::Done(Err(e)),
                Err(e) => retry_or_stop(e),
            }
        })
        .await
    }

    async fn with_backoff<T>(
        &self,
        deadline: Instant,
        mut attempt: impl AsyncFnMut() -> Attempt<T>,
    ) -> Result<T, Exhausted> {
        let mut delays = RETRY.delays();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (why, rate_limited) = match attempt().await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Stop(error) => return Err(Exhausted::Stopped(error)),
                Attempt::Again { why, rate_limited } => (why, rate_limited),
            };
            let now = Instant::now();
            let mut delay = delays.next().unwrap_or(RETRY.max);
            if rate_limited {
                delay = delay.max(RATE_LIMITED_PAUSE);
            }
            if now + delay >= deadline {
                // One last attempt at the deadline beats giving up early with time left.
                if now >= deadline {
                    return Err(Exhausted::OutOfTime { last: why });
                }
                delay = deadline - now;
            }
            let cause = if rate_limited {
                format!("the API is rate-limiting this account ({why}); attempt {attempts} waits")
            } else {
                format!("retrying after attempt {attempts}: {why}")
            };
            self.waits.sleep(cause, delay).await;
        }
    }
}

/// What a refused `token_add_ip` most likely means, and where to look.
fn refusal_hint(direct: bool, cause: &ApiError) -> &'static str {
    match (cause.verdict(), direct) {
        (Verdict::AuthRefused, true) => {
            "This host is not authorized to change the whitelist, or the credentials are wrong. \
             Set SENDSMS_BOOTSTRAP_PROXY (a proxy whose egress IP is whitelisted) or \
             SENDSMS_BOOTSTRAP_BIND (a local address that is), or add the IP once in the sendSMS \
             web account; and check SENDSMS_USERNAME and SENDSMS_API_KEY (an API key of that \
             account, not its password)."
        }
        (Verdict::AuthRefused, false) => {
            "Two causes give this answer: wrong credentials (SENDSMS_USERNAME, or SENDSMS_API_KEY, \
             which must be an API key of that account, not its password), or the bootstrap path's \
             egress IP is not on the key's whitelist. To tell them apart, open the sendSMS web \
             account at Account >> API Keys: if the key is not listed there, the credentials are \
             wrong; if it is, its \"Locked On IP\" list must include the bootstrap path's egress IP."
        }
        _ => "The API refused the request itself, not the route: its answer above says why.",
    }
}

/// Throttled and transient failures are tried again; anything else ends the attempt.
fn retry_or_stop<T>(error: ApiError) -> Attempt<T> {
    // Refused by our own budget: nothing was sent, and the API is not rate-limiting anyone.
    if matches!(error, ApiError::NotSent(_)) {
        return Attempt::Again {
            why: error.to_string(),
            rate_limited: false,
        };
    }
    match error.verdict() {
        Verdict::RateLimited => Attempt::Again {
            why: error.to_string(),
            rate_limited: true,
        },
        Verdict::Transient => Attempt::Again {
            why: error.to_string(),
            rate_limited: false,
        },
        _ => Attempt::Stop(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ADD, FakeApi, LIST};

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn reconciler(api: &Arc<FakeApi>, timeout: Duration) -> Reconciler {
        let api: Arc<dyn Api> = api.clone();
        Reconciler::new(api, timeout)
    }

    #[tokio::test(start_paused = true)]
    async fn a_listed_ip_is_proven_by_one_read_and_nothing_is_written() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[here]);
        let proof = reconciler(&api, TIMEOUT).ensure(here).await.expect("proof");
        assert_eq!(proof.source, Source::AlreadyListed);
        assert_eq!((api.calls(LIST), api.calls(ADD)), (1, 0));
        assert!(proof.whitelist.is_some_and(|w| w.covers(here)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_ip_is_added_once_then_proven_after_the_propagation_delay() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[]);
        api.with(|s| s.propagation = Duration::from_secs(3));
        let started = Instant::now();
        let logs = crate::testing::Logs::capture();
        let proof = reconciler(&api, TIMEOUT).ensure(here).await.expect("proof");
        // A refusal is an answer: it is not read again before the write.
        assert!(!logs.text().contains("reading again"), "{}", logs.text());
        let Source::Added { duplicate, checks } = proof.source else {
            panic!("{proof}");
        };
        assert!(!duplicate);
        assert!(
            checks >= 2,
            "the first checks ran before the address took effect"
        );
        assert_eq!(api.calls(ADD), 1, "one write");
        assert!(started.elapsed() >= Duration::from_secs(3));
        assert!(
            started.elapsed() < Duration::from_secs(3) + RETRY.max + RETRY.max / 2,
            "proven within one backoff step of taking effect: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_proof_waits_until_the_whitelist_lists_the_ip() {
        // Refused at first, so the IP is added; then the provider lets the key work from here
        // before its list shows the address (modelled by a key that reads from anywhere), so
        // only `covers` tells the address is not listed yet.
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[ip("198.51.100.1")]);
        api.with(|s| {
            s.cloud = true;
            s.propagation = Duration::from_secs(2);
        });
        api.refuse_next(LIST, -8);
        let proof = reconciler(&api, TIMEOUT).ensure(here).await.expect("proof");
        assert!(
            matches!(proof.source, Source::Added { checks, .. } if checks >= 2),
            "{proof}"
        );
        assert!(proof.whitelist.is_some_and(|w| w.covers(here)));
        assert_eq!(api.calls(ADD), 1);
    }

    #[test]
    fn the_real_routes_say_which_bootstrap_path_they_take() {
        let mut settings = crate::testing::flow_settings(TIMEOUT);
        let credentials = settings.credentials.clone();
        let routes = |settings: &crate::flow::Settings| -> Arc<dyn Api> {
            Arc::new(Routes::new(&settings.api, &credentials, None).expect("routes"))
        };
        let direct = routes(&settings);
        assert!(direct.bootstrap_is_direct() && !direct.bootstrap_via_proxy());
        assert_eq!(direct.bootstrap_route(), "the direct route");
        settings.api.bootstrap.proxy = Some(crate::secret::SecretUrl::new(
            "http://user:pw@127.0.0.1:3128".into(),
        ));
        let proxied = routes(&settings);
        assert!(!proxied.bootstrap_is_direct() && proxied.bootstrap_via_proxy());
        assert_eq!(
            proxied.bootstrap_route(),
            "bootstrap proxy http://127.0.0.1:3128 (SENDSMS_BOOTSTRAP_PROXY)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn every_read_goes_over_the_direct_route_of_the_addresss_family() {
        for here in [ip("203.0.113.10"), ip("2001:db8::10")] {
            let api = FakeApi::new(here, &[]);
            api.with(|s| s.propagation = Duration::from_secs(2));
            let reconciler = reconciler(&api, TIMEOUT);
            reconciler.ensure(here).await.expect("proof");
            reconciler.check(here).await.expect("report");
            let detected = async { Ok::<_, ()>(here) };
            reconciler
                .ensure_detected(Family::of(here), detected)
                .await
                .expect("detected")
                .expect("proof");
            let over = api.with(|s| s.read_over.clone());
            assert!(over.len() >= 4, "{over:?}");
            assert!(
                over.iter().all(|f| *f == Family::of(here)),
                "{here}: {over:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_that_works_from_an_unlisted_address_is_not_ip_locked_and_nothing_is_written() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[ip("198.51.100.1")]);
        api.with(|s| s.cloud = true);
        let proof = reconciler(&api, TIMEOUT).ensure(here).await.expect("proof");
        assert_eq!(proof.source, Source::NotIpLocked, "{proof}");
        assert_eq!((api.calls(LIST), api.calls(ADD)), (1, 0));
        let report = reconciler(&api, TIMEOUT).check(here).await.expect("report");
        assert!(report.usable() && report.not_ip_locked(), "{report:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_that_is_not_the_api_ends_every_command_at_once() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[]);
        let not_the_api =
            || ApiError::NotTheApi("http://127.0.0.1:9/jsn does not look like the API: 404".into());
        api.with(|s| s.scripted.push_back((LIST, not_the_api())));
        let e = reconciler(&api, TIMEOUT)
            .ensure(here)
            .await
            .expect_err("not the API");
        assert!(matches!(e, ReconcileError::NotTheApi(_)), "{e}");
        assert!(e.to_string().contains("SENDSMS_API_URL"), "{e}");
        assert_eq!(
            api.calls(ADD),
            0,
            "nothing is written to something that is not the API"
        );
        api.with(|s| s.scripted.push_back((LIST, not_the_api())));
        let e = reconciler(&api, TIMEOUT)
            .check(here)
            .await
            .expect_err("not the API");
        assert!(matches!(e, ReconcileError::NotTheApi(_)), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_bootstrap_proxy_is_reported_after_a_few_quick_tries() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[]);
        for _ in 0..50 {
            api.with(|s| {
                s.scripted
                    .push_back((ADD, ApiError::Unreachable("connection refused".into())))
            });
        }
        let started = Instant::now();
        let e = reconciler(&api, TIMEOUT)
            .ensure(here)
            .await
            .expect_err("unreachable");
        assert!(
            matches!(e, ReconcileError::BootstrapUnreachable { .. }),
            "{e}"
        );
        // The fake's bootstrap path is a bind address, not a proxy: the hint says which.
        assert!(
            e.to_string()
                .contains("SENDSMS_BOOTSTRAP_BIND is an address"),
            "{e}"
        );
        assert_eq!(api.calls(ADD) as u32, UNREACHABLE_TRIES);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Without a bootstrap path the direct route is the API itself: retried as any outage.
        api.with(|s| s.bootstrap_is_direct = true);
        let e = reconciler(&api, Duration::from_secs(5))
            .ensure(here)
            .await
            .expect_err("unreachable");
        assert!(matches!(e, ReconcileError::ApiUnavailable { .. }), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limited_answer_pauses_at_least_six_seconds() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[here]);
        api.refuse_next(LIST, -4096);
        let logs = crate::testing::Logs::capture();
        let proof = reconciler(&api, TIMEOUT).ensure(here).await.expect("proof");
        assert_eq!(
            proof.source,
            Source::AlreadyListed,
            "a throttled read is read again"
        );
        assert!(
            logs.text()
                .contains("the API is rate-limiting this account (the API answered status -4096"),
            "{}",
            logs.text()
        );
        assert!(logs.text().contains("attempt 1 waits"), "{}", logs.text());
        let times = api.call_times(LIST);
        assert_eq!(times.len(), 2);
        assert!(
            times[1] - times[0] >= RATE_LIMITED_PAUSE,
            "{:?}",
            times[1] - times[0]
        );
        assert_eq!(api.calls(ADD), 0, "no write was spent on a listed address");
    }

    #[tokio::test(start_paused = true)]
    async fn transient_faults_are_retried_and_the_write_is_not_repeated_after_success() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[]);
        api.drop_next(LIST);
        api.drop_next(ADD);
        api.refuse_next(ADD, -16);
        api.drop_next(LIST);
        let proof = reconciler(&api, TIMEOUT).ensure(here).await.expect("proof");
        assert!(matches!(proof.source, Source::Added { .. }), "{proof}");
        // Two refused or lost adds, then the one that succeeded.
        assert_eq!(api.calls(ADD), 3);
        assert!(api.with(|s| s.scripted.is_empty()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_bootstrap_path_fails_at_once_with_a_hint() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[]);
        api.with(|s| s.bootstrap_authorized = false);
        let started = Instant::now();
        let e = reconciler(&api, TIMEOUT)
            .ensure(here)
            .await
            .expect_err("refused");
        assert!(matches!(e, ReconcileError::BootstrapRefused { .. }), "{e}");
        for cause in [
            "Locked On IP",
            "SENDSMS_USERNAME",
            "SENDSMS_API_KEY",
            "API Keys",
        ] {
            assert!(e.to_string().contains(cause), "{cause}: {e}");
        }
        assert!(e.to_string().contains("\"Authentication failed"), "{e}");
        assert_eq!(api.calls(ADD), 1, "an auth refusal is not retried");
        assert!(started.elapsed() < Duration::from_secs(1));
        api.with(|s| s.bootstrap_is_direct = true);
        let e = reconciler(&api, TIMEOUT)
            .ensure(here)
            .await
            .expect_err("refused");
        assert!(e.to_string().contains("SENDSMS_BOOTSTRAP_PROXY"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn verification_stops_at_the_deadline() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[]);
        api.with(|s| s.propagation = Duration::from_secs(3600));
        let started = Instant::now();
        let e = reconciler(&api, Duration::from_secs(20))
            .ensure(here)
            .await
            .expect_err("never proven");
        assert!(matches!(e, ReconcileError::NotVerified { .. }), "{e}");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(20),
            "one last try at the deadline"
        );
        assert_eq!(api.calls(ADD), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn check_reads_only() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[]);
        let report = reconciler(&api, TIMEOUT).check(here).await.expect("report");
        assert!(!report.usable());
        assert!(report.refusal.is_some_and(|r| r.contains("-8")));
        api.with(|s| s.listed.push((here, Instant::now())));
        let report = reconciler(&api, TIMEOUT).check(here).await.expect("report");
        assert!(report.usable() && !report.not_ip_locked(), "{report:?}");
        assert_eq!((api.calls(LIST), api.calls(ADD)), (2, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_no_action_answers_writes_nothing_and_says_so() {
        let here = ip("203.0.113.10");
        let suspended = || ApiError::UnexpectedStatus {
            code: 7,
            message: "account suspended".into(),
        };
        let api = FakeApi::new(here, &[]);
        // First the read answers it, then (the read now fine) the add: each ends the proof.
        for (action, during, adds) in [(LIST, "token_list_ips", 0), (ADD, "token_add_ip", 1)] {
            api.with(|s| s.scripted.push_back((action, suspended())));
            let e = reconciler(&api, TIMEOUT)
                .ensure(here)
                .await
                .expect_err("unexpected");
            assert!(
                matches!(&e, ReconcileError::ApiUnavailable { during: d, .. } if *d == during),
                "{e}"
            );
            assert_eq!(
                api.calls(ADD),
                adds,
                "nothing written after it, nothing tried again"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_that_is_not_propagation_ends_the_proof_at_once() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[]);
        api.with(|s| s.propagation = Duration::from_secs(3600));
        let reconciler = reconciler(&api, TIMEOUT);
        // After the add, a refusal of the request itself says nothing about propagation.
        api.refuse_next(LIST, -8);
        api.refuse_next(LIST, -128);
        let started = Instant::now();
        let e = reconciler.ensure(here).await.expect_err("refused");
        assert!(matches!(e, ReconcileError::NotVerified { .. }), "{e}");
        assert!(e.to_string().contains("status -128"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        let not_the_api = ApiError::NotTheApi("http://127.0.0.1:9/json: HTTP 404".into());
        api.refuse_next(LIST, -8);
        api.with(|s| s.scripted.push_back((LIST, not_the_api)));
        let e = reconciler.ensure(here).await.expect_err("not the API");
        assert!(matches!(e, ReconcileError::NotTheApi(_)), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_reads_again_after_a_transient_fault() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[here]);
        api.drop_next(LIST);
        let report = reconciler(&api, TIMEOUT).check(here).await.expect("report");
        assert!(report.usable(), "{report:?}");
        assert_eq!(api.calls(LIST), 2);
    }

    #[test]
    fn each_proof_says_how_it_was_made() {
        let here = ip("203.0.113.10");
        let listed = Whitelist(vec![crate::sendsms::whitelist::WhitelistEntry::Address(
            here,
        )]);
        let proof = |source, whitelist| Proof {
            ip: here,
            source,
            whitelist,
            elapsed: Duration::from_millis(1500),
        };
        let said = |source, whitelist| proof(source, whitelist).to_string();
        assert_eq!(
            said(Source::AlreadyListed, Some(listed.clone())),
            "203.0.113.10 is already whitelisted and the key works from it; nothing written (1.50s)"
        );
        assert_eq!(
            said(
                Source::Added {
                    duplicate: false,
                    checks: 1
                },
                Some(listed.clone())
            ),
            "203.0.113.10 whitelisted and verified from this host after 1 check (1.50s); \
             whitelist: 203.0.113.10"
        );
        assert_eq!(
            said(
                Source::Added {
                    duplicate: true,
                    checks: 3
                },
                None
            ),
            "203.0.113.10 was already on the whitelist (API said duplicate) and verified from \
             this host after 3 checks (1.50s)"
        );
        assert_eq!(
            said(
                Source::Peer {
                    by: "pod-a/7".into(),
                    verified_at_ms: 1_700_000_000_000
                },
                None
            ),
            "203.0.113.10 was verified by fleet member pod-a/7 at 2023-11-14T22:13:20Z; \
             nothing written"
        );
        assert_eq!(
            said(Source::NotIpLocked, Some(listed)),
            "203.0.113.10 is not on the whitelist, yet the key works from it: the key is not \
             IP-locked; nothing written (1.50s)"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_read_overlaps_detection() {
        let here = ip("203.0.113.10");
        let api = FakeApi::new(here, &[here]);
        let detection = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, ()>(here)
        };
        let started = Instant::now();
        let proof = reconciler(&api, TIMEOUT)
            .ensure_detected(Family::V4, detection)
            .await
            .expect("detected")
            .expect("proof");
        assert_eq!(proof.source, Source::AlreadyListed);
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert!(api.call_times(LIST)[0] < started + Duration::from_secs(1));
    }
}
