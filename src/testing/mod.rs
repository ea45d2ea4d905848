//! Test doubles for in-process tests (a scripted detection source, a model of the sendSMS API) and the property tests.

mod properties;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::detect::{IpSource, LookupFuture, ProviderError, ProviderSpec};
use crate::net::Family;
use crate::reconcile::{Api, ApiFuture};
use crate::sendsms::api::ApiStatus;
use crate::sendsms::whitelist::WhitelistEntry;
use crate::sendsms::{Added, ApiError, Whitelist};
use crate::util::lock;

/// The log lines written on this thread while it lives (a test on tokio's current-thread
/// runtime logs from this thread only), without colours.
pub(crate) struct Logs {
    written: Arc<Mutex<Vec<u8>>>,
    _installed: tracing::subscriber::DefaultGuard,
}

/// Where captured log lines go.
struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub(crate) fn capture() -> Self {
        // tracing caches, for each log statement, whether any subscriber wants it, computed
        // over the subscribers alive at that moment. With only thread-local subscribers, a
        // statement first reached on a test thread without one, just as another test installs
        // its capture, can be cached as wanted by nobody: its events are then dropped for
        // every test (CI lost a rate-limit wait's line this way). A global subscriber that
        // wants everything down to DEBUG and writes nothing keeps every statement wanted; each
        // event still goes to the capturing thread's own subscriber.
        static LISTENING: std::sync::Once = std::sync::Once::new();
        LISTENING.call_once(|| {
            use tracing_subscriber::layer::SubscriberExt;
            let quiet =
                tracing_subscriber::registry().with(tracing_subscriber::filter::LevelFilter::DEBUG);
            let _ = tracing::subscriber::set_global_default(quiet);
        });
        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&written);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Sink(Arc::clone(&sink)))
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        Logs {
            written,
            _installed: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.written)).into_owned()
    }
}

/// A detection source whose answer the test sets, and which counts the questions it got.
pub(crate) struct FakeSource {
    answer: Mutex<Result<IpAddr, ProviderError>>,
    asked: AtomicU32,
    /// How long each answer takes (tokio's clock, so paused tests control the order).
    delay: Mutex<Duration>,
}

impl FakeSource {
    pub(crate) fn answering(ip: IpAddr) -> Arc<Self> {
        Arc::new(FakeSource {
            answer: Mutex::new(Ok(ip)),
            asked: AtomicU32::new(0),
            delay: Mutex::new(Duration::ZERO),
        })
    }

    /// Each answer from now on takes `delay`.
    pub(crate) fn delay(&self, delay: Duration) {
        *lock(&self.delay) = delay;
    }

    /// Refuses every lookup from now on as a throttling provider does (HTTP 403 or 429).
    pub(crate) fn throttle(&self, why: &str) {
        *lock(&self.answer) = Err(ProviderError::Throttled(why.to_owned()));
    }

    /// The address it gives from now on.
    pub(crate) fn set(&self, ip: IpAddr) {
        *lock(&self.answer) = Ok(ip);
    }

    /// Fails every lookup from now on.
    pub(crate) fn fail(&self, why: &str) {
        *lock(&self.answer) = Err(ProviderError::Failed(why.to_owned()));
    }

    pub(crate) fn ip(&self) -> IpAddr {
        lock(&self.answer)
            .clone()
            .unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    pub(crate) fn asked(&self) -> u32 {
        self.asked.load(Ordering::SeqCst)
    }

    /// A provider entry for `Detector::with_sources`: `text` is a provider spec (its
    /// `#OPERATOR` names the operator), `source` answers for it.
    pub(crate) fn spec(text: &str, source: &Arc<Self>) -> (ProviderSpec, Arc<dyn IpSource>) {
        let spec = text.parse().expect("a valid provider spec");
        let source: Arc<dyn IpSource> = source.clone();
        (spec, source)
    }
}

impl IpSource for FakeSource {
    fn lookup(&self, _family: Family) -> LookupFuture<'_> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let answer = lock(&self.answer).clone();
        let delay = *lock(&self.delay);
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer
        })
    }
}

/// The sendSMS API as the reconciler sees it, modelled: a key whose whitelist takes effect
/// `propagation` after an add, a direct route that works only from a listed egress address,
/// a bootstrap route that is authorized or not, and scripted failures served first.
pub(crate) struct FakeApi {
    state: Mutex<FakeState>,
}

/// The model's state; tests read and change it through `FakeApi::with`.
pub(crate) struct FakeState {
    /// Each listed address and when it takes effect.
    pub(crate) listed: Vec<(IpAddr, Instant)>,
    /// This host's egress address as the API sees the direct route.
    pub(crate) egress: IpAddr,
    /// A Cloud key works from anywhere.
    pub(crate) cloud: bool,
    pub(crate) bootstrap_authorized: bool,
    pub(crate) bootstrap_is_direct: bool,
    pub(crate) propagation: Duration,
    /// Failures to answer before the model does, each for one action, in order.
    pub(crate) scripted: VecDeque<(&'static str, ApiError)>,
    /// Every call: its action and when it was made.
    pub(crate) calls: Vec<(&'static str, Instant)>,
    /// The family of each `token_list_ips` call's direct route.
    pub(crate) read_over: Vec<Family>,
    /// Called around each call as the real routes call it (budgets, metrics), when set.
    pub(crate) observer: Option<Arc<dyn crate::sendsms::CallObserver>>,
}

/// The action names, as the API spells them.
pub(crate) const LIST: &str = "token_list_ips";
pub(crate) const ADD: &str = "token_add_ip";

impl FakeApi {
    /// A default key that lists only `listed`, seen from `egress`, with an authorized bootstrap
    /// route and no propagation delay.
    pub(crate) fn new(egress: IpAddr, listed: &[IpAddr]) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(FakeApi {
            state: Mutex::new(FakeState {
                listed: listed.iter().map(|ip| (*ip, now)).collect(),
                egress,
                cloud: false,
                bootstrap_authorized: true,
                bootstrap_is_direct: false,
                propagation: Duration::ZERO,
                scripted: VecDeque::new(),
                calls: Vec::new(),
                read_over: Vec::new(),
                observer: None,
            }),
        })
    }

    /// Reads or changes the model.
    pub(crate) fn with<R>(&self, change: impl FnOnce(&mut FakeState) -> R) -> R {
        change(&mut lock(&self.state))
    }

    /// Queues a refusal with `status` for the next call of `action`.
    pub(crate) fn refuse_next(&self, action: &'static str, status: i64) {
        self.with(|s| {
            s.scripted.push_back((
                action,
                ApiError::Refused {
                    status: ApiStatus::from_code(status),
                    message: format!("scripted {status}"),
                },
            ))
        });
    }

    /// Queues a transport failure for the next call of `action`.
    pub(crate) fn drop_next(&self, action: &'static str) {
        self.with(|s| {
            s.scripted
                .push_back((action, ApiError::Transport("scripted drop".into())))
        });
    }

    /// How many calls of `action` were made.
    pub(crate) fn calls(&self, action: &str) -> usize {
        self.with(|s| s.calls.iter().filter(|(a, _)| *a == action).count())
    }

    /// When each call of `action` was made.
    pub(crate) fn call_times(&self, action: &str) -> Vec<Instant> {
        self.with(|s| {
            s.calls
                .iter()
                .filter(|(a, _)| *a == action)
                .map(|(_, at)| *at)
                .collect()
        })
    }

    fn call(&self, action: &'static str) -> Result<(), ApiError> {
        self.with(|s| {
            s.calls.push((action, Instant::now()));
            match s.scripted.iter().position(|(a, _)| *a == action) {
                Some(at) => Err(s.scripted.remove(at).map_or_else(
                    || ApiError::Transport("scripted".into()),
                    |(_, error)| error,
                )),
                None => Ok(()),
            }
        })
    }
}

fn auth_failed() -> ApiError {
    ApiError::Refused {
        status: ApiStatus::AuthenticationFailed,
        message: "Authentication failed: IP address not authorized for this API key".into(),
    }
}

impl FakeState {
    fn effective(&self, now: Instant) -> Vec<IpAddr> {
        self.listed
            .iter()
            .filter(|(_, at)| *at <= now)
            .map(|(ip, _)| *ip)
            .collect()
    }
}

impl FakeApi {
    fn answer_list(&self) -> Result<Whitelist, ApiError> {
        self.call(LIST).and_then(|()| {
            self.with(|s| {
                let effective = s.effective(Instant::now());
                if s.cloud || effective.contains(&s.egress) {
                    Ok(Whitelist(
                        effective.into_iter().map(WhitelistEntry::Address).collect(),
                    ))
                } else {
                    Err(auth_failed())
                }
            })
        })
    }

    fn answer_add(&self, ip: IpAddr) -> Result<Added, ApiError> {
        self.call(ADD).and_then(|()| {
            self.with(|s| {
                if !s.bootstrap_authorized {
                    return Err(auth_failed());
                }
                if s.listed.iter().any(|(listed, _)| *listed == ip) {
                    return Ok(Added::Duplicate);
                }
                let at = Instant::now() + s.propagation;
                s.listed.push((ip, at));
                Ok(Added::New)
            })
        })
    }

    /// `answer`, through the observer as the real routes call it when one is set: the budgets
    /// first (a refusal means no call: `NotSent`), the count after.
    fn observed<T: Send + 'static>(
        &self,
        action: &'static str,
        answer: impl FnOnce(&Self) -> Result<T, ApiError> + Send + 'static,
    ) -> ApiFuture<'_, T> {
        let Some(observer) = self.with(|s| s.observer.clone()) else {
            let result = answer(self);
            return Box::pin(async move { result });
        };
        Box::pin(async move {
            observer
                .before_call(action)
                .await
                .map_err(ApiError::NotSent)?;
            let result = answer(self);
            let verdict = match &result {
                Ok(_) => crate::sendsms::Verdict::Success,
                Err(e) => e.verdict(),
            };
            observer.after_call(action, verdict);
            result
        })
    }
}

impl Api for FakeApi {
    fn list_ips(&self, family: Family) -> ApiFuture<'_, Whitelist> {
        self.with(|s| s.read_over.push(family));
        self.observed(LIST, FakeApi::answer_list)
    }

    fn add_ip(&self, ip: IpAddr) -> ApiFuture<'_, Added> {
        self.observed(ADD, move |api| api.answer_add(ip))
    }

    fn bootstrap_route(&self) -> String {
        "the fake bootstrap route".into()
    }

    fn bootstrap_is_direct(&self) -> bool {
        self.with(|s| s.bootstrap_is_direct)
    }
}

/// Flow settings for in-process tests: a fixed account, no coordination, a budget that never
/// waits, and `verify_timeout`.
pub(crate) fn flow_settings(verify_timeout: Duration) -> crate::flow::Settings {
    crate::flow::Settings {
        credentials: crate::secret::Credentials {
            username: "tester".into(),
            api_key: secrecy::SecretString::from("k3y-in-process".to_owned()),
        },
        api: crate::sendsms::Settings {
            url: url::Url::parse("http://127.0.0.1:9/json").expect("url"),
            request_timeout: Duration::from_secs(5),
            bootstrap: crate::sendsms::BootstrapPath::default(),
            extra_roots: crate::http::ExtraRoots::default(),
        },
        verify_timeout,
        api_budget: 600,
        coordination: crate::coord::Settings {
            mode: crate::coord::Mode::None,
            lease: Duration::from_secs(15),
            record_ttl: Duration::from_secs(6 * 3600),
            verify_timeout,
        },
    }
}

/// A flow over `api` whose client factory counts how often it built clients.
pub(crate) fn flow_over(
    api: &Arc<FakeApi>,
    metrics: Arc<crate::metrics::Metrics>,
    verify_timeout: Duration,
) -> (crate::flow::Flow, Arc<AtomicU32>) {
    let builds = Arc::new(AtomicU32::new(0));
    let (api, counted) = (Arc::clone(api), Arc::clone(&builds));
    let make_api: crate::flow::MakeApi = Box::new(move |_observer| {
        counted.fetch_add(1, Ordering::SeqCst);
        let api: Arc<dyn Api> = api.clone();
        Ok(api)
    });
    let flow = crate::flow::Flow::with_api(&flow_settings(verify_timeout), metrics, make_api)
        .expect("flow");
    (flow, builds)
}
