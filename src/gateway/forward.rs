//! One call through the gateway: hold it while the address is being whitelisted, send it again after a refusal for the IP, never twice otherwise.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::HeaderValue;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;

use super::call::{Call, Kind};
use crate::metrics::Metrics;
use crate::sendsms::api::{ApiError, ApiStatus, status_of};
use crate::sendsms::{CallObserver, Verdict};
use crate::status::{Cause, Readiness, Shared};
use crate::util::backoff::Backoff;

/// The API's answer, passed back to the app as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) http_status: u16,
    pub(crate) content_type: Option<HeaderValue>,
    pub(crate) body: Bytes,
    /// The `status` field, when the body is the API's JSON.
    pub(crate) api_status: Option<ApiStatus>,
}

impl Answer {
    pub(crate) fn new(http_status: u16, content_type: Option<HeaderValue>, body: Bytes) -> Self {
        Answer {
            http_status,
            content_type,
            api_status: status_of(&body),
            body,
        }
    }

    fn verdict(&self) -> Verdict {
        if !(200..300).contains(&self.http_status) {
            return ApiError::Http(self.http_status).verdict();
        }
        match self.api_status {
            Some(status) if status.is_error() => ApiError::Refused {
                status,
                message: String::new(),
            }
            .verdict(),
            Some(_) => Verdict::Success,
            None => Verdict::Transient,
        }
    }
}

/// A send that got no answer. The text never holds the URL, the key or the token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Provably nothing reached the API: the connection failed, or its local address was gone
    /// before the request left. Sending again cannot duplicate.
    NeverLeft(String),
    /// The request may have reached the API (a timeout, a connection lost after it was
    /// written): whatever it does may have been done.
    Unknown(String),
}

/// Sends one call to the API and reads the answer.
pub(crate) trait Upstream: Send + Sync {
    fn send<'a>(
        &'a self,
        call: &'a Call,
    ) -> Pin<Box<dyn Future<Output = Result<Answer, Failure>> + Send + 'a>>;
}

/// How a call ended, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Sent at once; the API's answer went back as it was.
    Forwarded,
    /// Held (readiness, a refusal for the IP, the budget, an unreachable API), then answered
    /// by the API.
    HeldThenSent,
    /// Not carried out: still refused for the IP when the hold ran out, or never sent (the API
    /// unreachable for the whole hold, the API budget spent for the whole hold).
    Refused,
    /// Sent, and no answer came back: the app gets a 502, and the call is not sent again.
    Unknown,
    /// The caller was turned away (no or a wrong token, not on loopback, a refused action).
    CallerRefused,
}

impl Outcome {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Outcome::Forwarded => "forwarded",
            Outcome::HeldThenSent => "held_then_sent",
            Outcome::Refused => "refused",
            Outcome::Unknown => "outcome_unknown",
            Outcome::CallerRefused => "caller_refused",
        }
    }
}

/// What the app gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The API's answer.
    Api(Answer),
    /// The call may have been carried out; nothing says whether.
    Unknown(String),
    /// The call was not sent (the API unreachable, or the budget spent, for the whole hold):
    /// `status` is the sendSMS code the app sees.
    NotSent { status: i64, why: String },
}

/// After a refusal for the IP, a call is sent at most this many times in all: each refusal
/// means nothing was done, but an account that refuses for another reason must not loop.
const MAX_SENDS_REFUSED: u32 = 3;
/// Sends of a query whose outcome stayed unknown, in all.
const MAX_SENDS_UNKNOWN: u32 = 3;
/// Between sends that never left: quick, as an address usually comes back within moments.
const UNSENT_RETRY: Backoff = Backoff {
    min: Duration::from_millis(25),
    max: Duration::from_secs(1),
    jitter: 0.2,
};

/// What the gateway needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// The longest a call waits in the gateway in all.
    pub(crate) hold: Duration,
    /// Calls that may wait at once; one more is not held but answered (or sent) at once.
    pub(crate) max_held: usize,
}

/// The hold-and-resend logic, over any upstream (the real API client, or a fake in tests).
pub(crate) struct Forwarder {
    upstream: Arc<dyn Upstream>,
    shared: Arc<Shared>,
    /// The budgets and the API call counts, shared with the whitelist flow.
    observer: Arc<dyn CallObserver>,
    limits: Limits,
    held: Semaphore,
    /// True once the process stops: every hold ends at once.
    stopping: watch::Sender<bool>,
}

/// One call's time held, and the gauge of calls waiting.
struct Hold<'a> {
    metrics: &'a Metrics,
    held: &'a Semaphore,
    stopping: watch::Receiver<bool>,
    deadline: Instant,
    total: Duration,
    waited: bool,
}

/// One call in the gauge of calls held now, for as long as this lives.
struct HeldNow<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> HeldNow<'a> {
    fn count(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        HeldNow(gauge)
    }
}

impl Drop for HeldNow<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How a wait ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Waited {
    /// What the call waited for came (perhaps at once, which is no hold at all).
    Done,
    /// The hold ran out first (or the control loop is gone).
    Deadline,
    /// Too many calls wait already: this one did not wait.
    Full,
}

impl Hold<'_> {
    /// Waits for `until` within the deadline, counted as held unless it is ready at once.
    async fn wait(&mut self, until: impl Future<Output = bool>) -> Waited {
        let mut until = std::pin::pin!(until);
        let ready = until.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        if let Poll::Ready(done) = ready {
            return if done { Waited::Done } else { Waited::Deadline };
        }
        if !self.open() {
            return Waited::Deadline;
        }
        let Ok(_permit) = self.held.try_acquire() else {
            return Waited::Full;
        };
        self.waited = true;
        let started = Instant::now();
        // A guard: when the app hangs up, its call is dropped mid-hold (and never sent).
        let _counted = HeldNow::count(&self.metrics.gateway_held);
        let stopping = self.stopping.wait_for(|stopping| *stopping);
        let done = tokio::select! {
            done = tokio::time::timeout_at(self.deadline, until) => done.unwrap_or(false),
            _ = stopping => false,
        };
        self.total += started.elapsed();
        if done { Waited::Done } else { Waited::Deadline }
    }

    /// A pause before sending again.
    async fn pause(&mut self, length: Duration) -> Waited {
        let pause = tokio::time::sleep(length);
        self.wait(async {
            pause.await;
            true
        })
        .await
    }

    fn open(&self) -> bool {
        Instant::now() < self.deadline && !*self.stopping.borrow()
    }
}

/// Resolves true once `readiness` satisfies `want`; false if the loop is gone.
async fn until(
    mut readiness: watch::Receiver<Readiness>,
    want: impl Fn(&Readiness) -> bool,
) -> bool {
    readiness.wait_for(|r| want(r)).await.is_ok()
}

impl Forwarder {
    pub(crate) fn new(
        upstream: Arc<dyn Upstream>,
        shared: Arc<Shared>,
        observer: Arc<dyn CallObserver>,
        limits: Limits,
    ) -> Self {
        let held = Semaphore::new(limits.max_held);
        Forwarder {
            upstream,
            shared,
            observer,
            limits,
            held,
            stopping: watch::Sender::new(false),
        }
    }

    /// Ends every hold now, and holds no call from now on.
    pub(crate) fn stop(&self) {
        self.stopping.send_replace(true);
    }

    fn metrics(&self) -> &Metrics {
        self.shared.metrics()
    }

    /// Counts a call the gateway turned away before anything else.
    pub(crate) fn count_refused_caller(&self, label: &'static str) {
        self.metrics()
            .gateway_calls
            .inc(label, Outcome::CallerRefused.label());
    }

    /// Forwards `call`, holding it as needed; counts how it ended. Also says how long it was
    /// held, if it was.
    pub(crate) async fn forward(&self, call: &Call) -> (Reply, Outcome, Option<Duration>) {
        let mut hold = Hold {
            metrics: self.metrics(),
            held: &self.held,
            stopping: self.stopping.subscribe(),
            deadline: Instant::now() + self.limits.hold,
            total: Duration::ZERO,
            waited: false,
        };
        let (reply, outcome) = self.attempts(call, &mut hold).await;
        if hold.waited {
            self.metrics().observe_hold(hold.total);
        }
        self.metrics()
            .gateway_calls
            .inc(call.action.label, outcome.label());
        (reply, outcome, hold.waited.then_some(hold.total))
    }

    async fn attempts(&self, call: &Call, hold: &mut Hold<'_>) -> (Reply, Outcome) {
        let readiness = self.shared.readiness();
        let label = call.action.label;
        let (mut refused, mut unknown, mut unsent) = (0u32, 0u32, 0u32);
        loop {
            if !readiness.borrow().ready {
                // An address is being whitelisted: wait for it rather than send to certain
                // failure. When the hold runs out the call is sent anyway, once.
                hold.wait(until(readiness.clone(), |r| r.ready)).await;
            }
            if call.action.kind == Kind::Query {
                // Billed sends are never delayed by the budget; queries share it with the
                // whitelist flow and the fleet, and wait for it at most the hold.
                // Under the hold's deadline, the budgets refuse at once a call that cannot fit
                // in time instead of waiting past it.
                let deadline = hold.deadline;
                let budget = async {
                    crate::util::deadline::within(deadline, self.observer.before_call(label))
                        .await
                        .is_ok()
                };
                if hold.wait(budget).await != Waited::Done {
                    return (
                        Reply::NotSent {
                            status: ApiStatus::TooManyRequests.code(),
                            why: format!(
                                "the API budget (SENDSMS_API_BUDGET) for {label} is spent"
                            ),
                        },
                        Outcome::Refused,
                    );
                }
            }
            let proofs = readiness.borrow().proofs;
            let failure = match self.upstream.send(call).await {
                Ok(answer) => {
                    self.observer.after_call(label, answer.verdict());
                    if answer.api_status != Some(ApiStatus::AuthenticationFailed) {
                        let outcome = if hold.waited {
                            Outcome::HeldThenSent
                        } else {
                            Outcome::Forwarded
                        };
                        return (Reply::Api(answer), outcome);
                    }
                    // Refused for the key or the address: nothing was done. Whitelist again at
                    // once (coalesced with every other waiting call and /recheck), then send
                    // again once an address proven after this refusal is ready.
                    refused += 1;
                    if refused < MAX_SENDS_REFUSED && hold.open() {
                        tracing::info!(
                            action = label,
                            "the API refused a gateway call for the key or address; holding it for a recheck"
                        );
                        let _ = self.shared.request_recheck(Cause::Refused);
                        let proven =
                            until(readiness.clone(), move |r| r.ready && r.proofs > proofs);
                        if hold.wait(proven).await == Waited::Done {
                            continue;
                        }
                    }
                    return (Reply::Api(answer), Outcome::Refused);
                }
                Err(failure) => failure,
            };
            self.observer.after_call(label, Verdict::Transient);
            match failure {
                Failure::NeverLeft(why) => {
                    unsent += 1;
                    tracing::debug!(action = label, reason = %why, "a gateway call never left; sending it again");
                    if hold.pause(UNSENT_RETRY.after(unsent)).await != Waited::Done {
                        return (
                            Reply::NotSent {
                                status: ApiStatus::InternalError.code(),
                                why: format!("the API could not be reached ({why})"),
                            },
                            Outcome::Refused,
                        );
                    }
                }
                Failure::Unknown(why) => {
                    unknown += 1;
                    let again = call.action.kind == Kind::Query && unknown < MAX_SENDS_UNKNOWN;
                    if !again || hold.pause(UNSENT_RETRY.after(unknown)).await != Waited::Done {
                        tracing::warn!(action = label, reason = %why, "the outcome of a gateway call is unknown; it is not sent again");
                        return (Reply::Unknown(why), Outcome::Unknown);
                    }
                }
            }
        }
    }
}
