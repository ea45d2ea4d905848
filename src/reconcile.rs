//! The reconciler: make one egress IP whitelisted and prove it from this host; shared by every command.

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::detect::Family;
use crate::sendsms::{AddOutcome, ApiError, Class, Client, Whitelist};

/// Delays between attempts: exponential with jitter, so a fleet that lost its IP together does
/// not retry in step; a rate-limit answer waits at least `rate_limited_pause`.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub rate_limited_pause: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(10),
            rate_limited_pause: Duration::from_secs(6),
        }
    }
}

impl RetryPolicy {
    fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        ExponentialBuilder::default()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .without_max_times()
            .build()
    }
}

/// How `ensure` ended well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The direct path already worked and listed the IP: nothing was written.
    AlreadyListed,
    /// `token_add_ip` was called through the bootstrap path, then the direct path proved it.
    Added { add: AddOutcome, checks: u32 },
}

#[derive(Clone, Debug)]
pub struct Report {
    pub ip: IpAddr,
    pub outcome: Outcome,
    pub whitelist: Whitelist,
    pub elapsed: Duration,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        match &self.outcome {
            Outcome::AlreadyListed => write!(
                f,
                "{} is already whitelisted and the key works from it; nothing written ({secs:.2}s)",
                self.ip
            ),
            Outcome::Added { add, checks } => write!(
                f,
                "{} {} and verified from this host after {checks} check{} ({secs:.2}s); whitelist: {}",
                self.ip,
                match add {
                    AddOutcome::Added => "whitelisted",
                    AddOutcome::AlreadyListed =>
                        "was already on the whitelist (API said duplicate)",
                },
                if *checks == 1 { "" } else { "s" },
                self.whitelist
            ),
        }
    }
}

/// What `check` found, read-only.
#[derive(Clone, Debug)]
pub struct CheckReport {
    pub ip: IpAddr,
    /// None when the key was refused from here, so the whitelist could not be read.
    pub whitelist: Option<Whitelist>,
    pub refusal: Option<String>,
}

impl CheckReport {
    pub fn usable(&self) -> bool {
        self.whitelist.as_ref().is_some_and(|w| w.covers(self.ip))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("the API refused token_add_ip for {ip} through {path}: {cause}. {hint}")]
    BootstrapRefused {
        ip: IpAddr,
        path: String,
        cause: ApiError,
        hint: &'static str,
    },
    #[error("{ip} was not proven usable within {waited:.0?}: {last}")]
    NotVerified {
        ip: IpAddr,
        waited: Duration,
        last: String,
    },
    #[error(
        "another member of the fleet ({holder}) has been whitelisting {ip} for {waited:.0?} without sharing a record; trying again later"
    )]
    PeerBusy {
        ip: IpAddr,
        holder: String,
        waited: Duration,
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

pub struct Reconciler {
    /// One direct client per family, each pinned to it: the proof for an IPv4 address must
    /// leave over IPv4, or it would prove some other address.
    direct: [Client; 2],
    bootstrap: Client,
    bootstrap_is_direct: bool,
    verify_timeout: Duration,
    retry: RetryPolicy,
}

impl Reconciler {
    pub fn new(
        direct: [Client; 2],
        bootstrap: Client,
        bootstrap_is_direct: bool,
        verify_timeout: Duration,
    ) -> Self {
        Reconciler {
            direct,
            bootstrap,
            bootstrap_is_direct,
            verify_timeout,
            retry: RetryPolicy::default(),
        }
    }

    fn direct(&self, ip: IpAddr) -> &Client {
        &self.direct[Family::of(ip) as usize]
    }

    /// Steps 3 to 5 of the flow: read from here, write through the bootstrap path only when
    /// needed, then prove from here under backoff until `verify_timeout` runs out.
    pub async fn ensure(&self, ip: IpAddr) -> Result<Report, ReconcileError> {
        let started = Instant::now();
        let first_read = self.direct(ip).list_ips().await;
        self.ensure_after_read(ip, first_read, started).await
    }

    /// `ensure` with the first read made while `detection` runs: the read does not need the
    /// address, so a start costs one round trip less (the floor is max(detect, read) + add + read).
    /// A detection error is returned as is; the read it overlapped is then wasted, one call.
    pub async fn ensure_detected<E>(
        &self,
        family: Family,
        detection: impl Future<Output = Result<IpAddr, E>>,
    ) -> Result<Result<Report, ReconcileError>, E> {
        let started = Instant::now();
        let (detected, first_read) =
            tokio::join!(detection, self.direct[family as usize].list_ips());
        let ip = detected?;
        Ok(self.ensure_after_read(ip, first_read, started).await)
    }

    async fn ensure_after_read(
        &self,
        ip: IpAddr,
        first_read: Result<Whitelist, ApiError>,
        started: Instant,
    ) -> Result<Report, ReconcileError> {
        let deadline = started + self.verify_timeout;
        let report = |outcome, whitelist| Report {
            ip,
            outcome,
            whitelist,
            elapsed: started.elapsed(),
        };

        let direct = self.direct(ip);
        let first_read = match first_read {
            // Throttled or unanswered, the read says nothing about the whitelist: ask again
            // rather than spend a write (and its proof) on an address that may be listed.
            Err(e) if matches!(direct.class_of(&e), Class::RateLimited | Class::Transient) => {
                tracing::info!(%ip, cause = %e, "no answer about the whitelist yet; reading again");
                match self.read_until_answered(direct, deadline).await {
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
                return Ok(report(Outcome::AlreadyListed, whitelist));
            }
            Ok(whitelist) => {
                tracing::info!(%ip, whitelist = %whitelist, "the key works here but does not list this IP")
            }
            Err(e) => tracing::info!(%ip, cause = %e, "the key does not work from this host yet"),
        }

        let add = self
            .with_backoff(deadline, async || match self.bootstrap.add_ip(ip).await {
                Ok(outcome) => Attempt::Done(outcome),
                Err(e) => self.retry_or_stop(&self.bootstrap, e),
            })
            .await
            .map_err(|exhausted| match exhausted {
                Exhausted::Stopped(cause) => ReconcileError::BootstrapRefused {
                    ip,
                    path: self.bootstrap.route().to_owned(),
                    hint: if self.bootstrap_is_direct {
                        "This host is not authorized to change the whitelist: set SENDSMS_BOOTSTRAP_PROXY \
                         (a proxy whose egress IP is whitelisted) or SENDSMS_BOOTSTRAP_BIND (a local \
                         address that is), or add the IP once in the sendSMS web account."
                    } else {
                        "The bootstrap path is not authorized for this key: check that its egress IP is \
                         on the key's whitelist (web account: Account >> API Keys >> Locked On IP)."
                    },
                    cause,
                },
                Exhausted::OutOfTime { last } => ReconcileError::ApiUnavailable {
                    during: "token_add_ip",
                    waited: started.elapsed(),
                    cause: last,
                },
            })?;
        tracing::info!(%ip, path = self.bootstrap.route(), ?add, "token_add_ip accepted");

        let mut checks = 0u32;
        let verified = self
            .with_backoff(deadline, async || {
                checks += 1;
                match direct.list_ips().await {
                    Ok(whitelist) if whitelist.covers(ip) => Attempt::Done(whitelist),
                    Ok(whitelist) => Attempt::Again {
                        why: format!(
                            "the key works but the whitelist does not list {ip} yet: {whitelist}"
                        ),
                        rate_limited: false,
                    },
                    // Right after the add, a refusal from here is the provider still propagating.
                    Err(e) if direct.class_of(&e) == Class::AuthRefused => Attempt::Again {
                        why: format!("the key is still refused from this host: {e}"),
                        rate_limited: false,
                    },
                    Err(e) => self.retry_or_stop(direct, e),
                }
            })
            .await;
        match verified {
            Ok(whitelist) => {
                let report = report(Outcome::Added { add, checks }, whitelist);
                tracing::info!(%ip, checks, elapsed = ?report.elapsed, "verified from this host");
                Ok(report)
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
    pub async fn check(&self, ip: IpAddr) -> Result<CheckReport, ReconcileError> {
        let started = Instant::now();
        let deadline = started + self.verify_timeout;
        let listed = self.read_until_answered(self.direct(ip), deadline).await;
        match listed {
            Ok(Ok(whitelist)) => Ok(CheckReport {
                ip,
                whitelist: Some(whitelist),
                refusal: None,
            }),
            Ok(Err(refusal)) => Ok(CheckReport {
                ip,
                whitelist: None,
                refusal: Some(refusal.to_string()),
            }),
            Err(Exhausted::Stopped(cause)) => Ok(CheckReport {
                ip,
                whitelist: None,
                refusal: Some(cause.to_string()),
            }),
            Err(Exhausted::OutOfTime { last }) => Err(ReconcileError::ApiUnavailable {
                during: "token_list_ips",
                waited: started.elapsed(),
                cause: last,
            }),
        }
    }

    /// `token_list_ips` from here until it answers: the whitelist, or a refusal of the key
    /// (itself an answer); throttling and transient failures are retried until `deadline`.
    async fn read_until_answered(
        &self,
        direct: &Client,
        deadline: Instant,
    ) -> Result<Result<Whitelist, ApiError>, Exhausted> {
        self.with_backoff(deadline, async || match direct.list_ips().await {
            Ok(whitelist) => Attempt::Done(Ok(whitelist)),
            Err(e) if direct.class_of(&e) == Class::AuthRefused => Attempt::Done(Err(e)),
            Err(e) => self.retry_or_stop(direct, e),
        })
        .await
    }

    fn retry_or_stop<T>(&self, client: &Client, error: ApiError) -> Attempt<T> {
        match client.class_of(&error) {
            Class::RateLimited => Attempt::Again {
                why: error.to_string(),
                rate_limited: true,
            },
            Class::Transient => Attempt::Again {
                why: error.to_string(),
                rate_limited: false,
            },
            _ => Attempt::Stop(error),
        }
    }

    async fn with_backoff<T>(
        &self,
        deadline: Instant,
        mut attempt: impl AsyncFnMut() -> Attempt<T>,
    ) -> Result<T, Exhausted> {
        let mut delays = self.retry.delays();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let (why, rate_limited) = match attempt().await {
                Attempt::Done(value) => return Ok(value),
                Attempt::Stop(error) => return Err(Exhausted::Stopped(error)),
                Attempt::Again { why, rate_limited } => (why, rate_limited),
            };
            let now = Instant::now();
            let mut delay = delays.next().unwrap_or(self.retry.max_delay);
            if rate_limited {
                delay = delay.max(self.retry.rate_limited_pause);
            }
            if now + delay >= deadline {
                // One last attempt at the deadline beats giving up early with time left.
                if now >= deadline {
                    return Err(Exhausted::OutOfTime { last: why });
                }
                delay = deadline - now;
            }
            tracing::debug!(attempt = attempts, ?delay, reason = %why, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}
