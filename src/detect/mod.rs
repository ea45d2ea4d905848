//! Public-IP detection: ask HTTPS, DNS and interface providers at once; settle on a quorum of operators.

pub(crate) mod dns;
pub(crate) mod echo;
mod iface;
pub(crate) mod quorum;
mod spec;

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use quorum::{Votes, settled};
pub(crate) use spec::{ProviderKind, ProviderSpec, default_providers, operators_serving};

use crate::net::{Family, non_public_reason};
use crate::util::backoff::Backoff;
use crate::util::lock;

/// What detection needs to know, and nothing else: `detect` runs without credentials.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) providers: Vec<ProviderSpec>,
    /// Distinct operators that must report the same address.
    pub(crate) quorum: usize,
    pub(crate) families: Vec<Family>,
    pub(crate) allow_non_public: bool,
    /// Each provider's own timeout.
    pub(crate) timeout: Duration,
}

/// A provider's failure; `Throttled` (HTTP 403/429) pauses it for longer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProviderError {
    Failed(String),
    Throttled(String),
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderError::Failed(why) => f.write_str(why),
            ProviderError::Throttled(why) => write!(f, "{why} (paused)"),
        }
    }
}

pub(crate) type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<IpAddr, ProviderError>> + Send + 'a>>;

/// What every provider kind implements: one lookup over the given family's transport.
pub(crate) trait IpSource: Send + Sync {
    fn lookup(&self, family: Family) -> LookupFuture<'_>;
}

/// What one provider said in one round.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Answer {
    Address(IpAddr),
    Rejected(String),
    Failed(String),
    /// Still running when the round ended.
    Unanswered,
    /// Skipped: backing off after earlier failures.
    Paused,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Address(ip) => write!(f, "said {ip}"),
            Answer::Rejected(why) => write!(f, "was rejected: {why}"),
            Answer::Failed(why) => write!(f, "failed: {why}"),
            Answer::Unanswered => f.write_str("had not answered"),
            Answer::Paused => f.write_str("was paused after failures"),
        }
    }
}

/// A settled address and the operators that agreed on it.
#[derive(Clone, Debug)]
pub(crate) struct Detection {
    pub(crate) ip: IpAddr,
    pub(crate) operators: Vec<String>,
    pub(crate) elapsed: Duration,
}

impl Detection {
    /// Logs what was settled and by whom, and gives the address.
    pub(crate) fn logged(self, family: Family) -> IpAddr {
        tracing::info!(ip = %self.ip, %family, operators = ?self.operators, elapsed = ?self.elapsed, "egress address detected");
        self.ip
    }
}

/// Detection failed; says what each provider answered so an operator can see who disagreed.
#[derive(Debug, thiserror::Error)]
#[error("the {family} egress address could not be determined ({problem}): {}", summarize(.answers))]
pub(crate) struct DetectError {
    pub(crate) family: Family,
    pub(crate) problem: String,
    pub(crate) answers: Vec<(String, Answer)>,
}

fn summarize(answers: &[(String, Answer)]) -> String {
    if answers.is_empty() {
        return "no provider serves this family".to_owned();
    }
    answers
        .iter()
        .map(|(p, a)| format!("{p} {a}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Per-provider backoff: a failing provider is asked less often, a throttling one is paused.
#[derive(Clone, Copy, Default)]
struct Health {
    failures: u32,
    paused_until: Option<Instant>,
}

/// A failing provider is asked again after 30 s, doubling to 30 min; a throttling one after 15 min.
const FAILURE_PAUSE: Backoff = Backoff {
    min: Duration::from_secs(30),
    max: Duration::from_secs(30 * 60),
    jitter: 0.0,
};
const THROTTLE_PAUSE: Duration = Duration::from_secs(15 * 60);

struct Provider {
    spec: ProviderSpec,
    source: Arc<dyn IpSource>,
    health: Mutex<[Health; 2]>,
}

impl Provider {
    fn health(&self, family: Family) -> Health {
        let slots = lock(&self.health);
        slots[family as usize]
    }

    fn record(&self, family: Family, outcome: Option<&ProviderError>) {
        let mut slots = lock(&self.health);
        let health = &mut slots[family as usize];
        match outcome {
            None => *health = Health::default(),
            Some(error) => {
                health.failures = health.failures.saturating_add(1);
                let pause = match error {
                    ProviderError::Throttled(_) => THROTTLE_PAUSE,
                    ProviderError::Failed(_) => FAILURE_PAUSE.after(health.failures),
                };
                health.paused_until = Some(Instant::now() + pause);
            }
        }
    }
}

/// Asks every configured provider of a family at once and settles on the address a quorum of
/// distinct operators reports; remembers which providers fail, to ask them less often.
pub(crate) struct Detector {
    providers: Vec<Arc<Provider>>,
    quorum: usize,
    allow_non_public: bool,
    timeout: Duration,
}

impl Detector {
    pub(crate) fn new(settings: &Settings) -> Self {
        let timeout = settings.timeout;
        let echo_clients = Arc::new(echo::EchoClients::new(timeout));
        let sources = settings.providers.iter().map(|spec| {
            let source: Arc<dyn IpSource> = match &spec.kind {
                ProviderKind::Http(url) => {
                    Arc::new(echo::HttpEcho::new(url.clone(), Arc::clone(&echo_clients)))
                }
                ProviderKind::Dns(query) => Arc::new(dns::DnsWhoami::new(query.clone(), timeout)),
                ProviderKind::Iface(name) => Arc::new(iface::InterfaceAddress::new(name.clone())),
            };
            (spec.clone(), source)
        });
        Self::with_sources(settings, sources)
    }

    /// A detector over given sources, each under its spec's operator (tests plug fakes in here).
    pub(crate) fn with_sources(
        settings: &Settings,
        sources: impl IntoIterator<Item = (ProviderSpec, Arc<dyn IpSource>)>,
    ) -> Self {
        Detector {
            providers: sources
                .into_iter()
                .map(|(spec, source)| {
                    Arc::new(Provider {
                        spec,
                        source,
                        health: Mutex::new([Health::default(); 2]),
                    })
                })
                .collect(),
            quorum: settings.quorum,
            allow_non_public: settings.allow_non_public,
            timeout: settings.timeout,
        }
    }

    /// Each provider's own timeout: the longest one detection may take.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Asks every provider of the family at once, each with its own timeout, and settles as
    /// soon as `quorum` operators agree on one address that no other address matches; the
    /// providers still running are then abandoned.
    pub(crate) async fn detect(&self, family: Family) -> Result<Detection, DetectError> {
        let started = Instant::now();
        let serving: Vec<&Arc<Provider>> = self
            .providers
            .iter()
            .filter(|p| p.spec.family().is_none_or(|f| f == family))
            .collect();
        let now = Instant::now();
        let ready: Vec<&Arc<Provider>> = serving
            .iter()
            .copied()
            .filter(|p| {
                p.health(family)
                    .paused_until
                    .is_none_or(|until| until <= now)
            })
            .collect();
        // Backing off must not make a quorum impossible: then everyone is asked.
        let asked =
            if quorum::distinct(ready.iter().map(|p| p.spec.operator.as_str())) >= self.quorum {
                ready
            } else {
                serving.clone()
            };

        let mut answers: Vec<(String, Answer)> = serving
            .iter()
            .map(|p| {
                let answer = if asked.iter().any(|a| Arc::ptr_eq(a, p)) {
                    Answer::Unanswered
                } else {
                    Answer::Paused
                };
                (p.spec.to_string(), answer)
            })
            .collect();
        let mut votes = Votes::new();
        let mut pending = JoinSet::new();
        for (index, provider) in serving.iter().enumerate() {
            if !asked.iter().any(|a| Arc::ptr_eq(a, provider)) {
                continue;
            }
            let provider = Arc::clone(provider);
            let timeout = self.timeout;
            pending.spawn(async move {
                let result = tokio::time::timeout(timeout, provider.source.lookup(family))
                    .await
                    .unwrap_or_else(|_| Err(ProviderError::Failed("timed out".into())));
                provider.record(family, result.as_ref().err());
                (index, result)
            });
        }
        while let Some(joined) = pending.join_next().await {
            let Ok((index, result)) = joined else {
                continue;
            };
            let operator = serving[index].spec.operator.clone();
            answers[index].1 = match result {
                Err(e) => Answer::Failed(e.to_string()),
                Ok(ip) => match self.accept(family, ip) {
                    Err(why) => Answer::Rejected(why),
                    Ok(ip) => {
                        let voters = votes.entry(ip).or_default();
                        if !voters.contains(&operator) {
                            voters.push(operator);
                        }
                        Answer::Address(ip)
                    }
                },
            };
            if let Some(ip) = settled(&votes, self.quorum) {
                pending.abort_all();
                let detection = Detection {
                    ip,
                    operators: votes.remove(&ip).unwrap_or_default(),
                    elapsed: started.elapsed(),
                };
                if votes.values().any(|v| !v.is_empty()) {
                    tracing::warn!(%ip, answers = %summarize(&answers), "providers disagree; the minority is ignored");
                }
                return Ok(detection);
            }
        }
        let problem = if votes.len() > 1 {
            format!(
                "providers disagree and no address has {} operators behind it alone",
                self.quorum
            )
        } else {
            format!("fewer than {} operators agreed", self.quorum)
        };
        Err(DetectError {
            family,
            problem,
            answers,
        })
    }

    fn accept(&self, family: Family, ip: IpAddr) -> Result<IpAddr, String> {
        let ip = ip.to_canonical();
        if Family::of(ip) != family {
            return Err(format!("{ip} is not {family}"));
        }
        match non_public_reason(ip) {
            Some(reason) if !self.allow_non_public => Err(format!(
                "{ip} is {reason} (SENDSMS_ALLOW_NON_PUBLIC_IPS=true accepts it)"
            )),
            _ => Ok(ip),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeSource, Logs};

    fn settings(quorum: usize) -> Settings {
        Settings {
            providers: Vec::new(),
            quorum,
            families: vec![Family::V4],
            allow_non_public: false,
            timeout: Duration::from_secs(5),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    /// A public address: refused only by the rule a test is about.
    const PUBLIC: &str = "8.8.8.8";

    #[tokio::test(start_paused = true)]
    async fn two_urls_of_one_operator_are_one_vote() {
        let same = FakeSource::answering(ip(PUBLIC));
        let detector = Detector::with_sources(
            &settings(2),
            [
                FakeSource::spec("https://a.example.net/ip#acme", &same),
                FakeSource::spec("https://b.example.net/ip#acme", &same),
            ],
        );
        let e = detector.detect(Family::V4).await.expect_err("one operator");
        assert_eq!(e.problem, "fewer than 2 operators agreed", "{e}");
        assert!(
            e.answers
                .iter()
                .all(|(_, answer)| *answer == Answer::Address(ip(PUBLIC))),
            "both answered and were accepted: {e}"
        );
        let other = FakeSource::answering(ip("8.8.4.4"));
        let two = Detector::with_sources(
            &settings(2),
            [
                FakeSource::spec("https://a.example.net/ip#acme", &other),
                FakeSource::spec("https://b.example.org/ip#other", &other),
            ],
        );
        let found = two.detect(Family::V4).await.expect("two operators");
        assert_eq!(found.ip, ip("8.8.4.4"));
        assert_eq!(found.operators, ["acme", "other"]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_of_the_wrong_family_is_rejected() {
        let v6 = FakeSource::answering(ip("2606:4700::1111"));
        let v4 = FakeSource::answering(ip("8.8.4.4"));
        let detector = Detector::with_sources(
            &settings(1),
            [FakeSource::spec("https://a.example.net/ip#a", &v6)],
        );
        let e = detector.detect(Family::V4).await.expect_err("wrong family");
        assert!(
            matches!(&e.answers[0].1, Answer::Rejected(why) if why.contains("is not ipv4")),
            "{e}"
        );
        let mixed = Detector::with_sources(
            &settings(2),
            [
                FakeSource::spec("https://a.example.net/ip#a", &v6),
                FakeSource::spec("https://b.example.org/ip#b", &v4),
                FakeSource::spec("https://c.example.com/ip#c", &v4),
            ],
        );
        assert_eq!(mixed.detect(Family::V4).await.expect("quorum").ip, v4.ip());
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_pinned_to_one_family_is_never_asked_for_the_other() {
        let v4_server = FakeSource::answering(ip(PUBLIC));
        let detector = Detector::with_sources(
            &settings(1),
            [FakeSource::spec(
                "dns://192.0.2.53/whoami.test#dns",
                &v4_server,
            )],
        );
        let e = detector
            .detect(Family::V6)
            .await
            .expect_err("nobody serves IPv6");
        assert!(e.answers.is_empty(), "{e}");
        assert!(
            e.to_string().ends_with(": no provider serves this family"),
            "{e}"
        );
        assert_eq!(v4_server.asked(), 0);
        assert_eq!(
            detector.detect(Family::V4).await.expect("v4").ip,
            ip(PUBLIC)
        );
        assert_eq!(v4_server.asked(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_provider_is_paused_30_s_doubling_up_to_30_min() {
        let down = FakeSource::answering(ip(PUBLIC));
        down.fail("connection refused");
        let up = FakeSource::answering(ip(PUBLIC));
        // It answers after the failure, so the round always sees the failure.
        up.delay(Duration::from_millis(1));
        let detector = Detector::with_sources(
            &settings(1),
            [
                FakeSource::spec("https://a.example.net/ip#a", &down),
                FakeSource::spec("https://b.example.org/ip#b", &up),
            ],
        );
        for pause in [30, 60, 120, 240, 480, 960, 1800, 1800] {
            let asked = down.asked();
            detector.detect(Family::V4).await.expect("b answers");
            assert_eq!(down.asked(), asked + 1, "asked again after {pause} s");
            tokio::time::advance(Duration::from_secs(pause) - Duration::from_millis(2)).await;
            detector.detect(Family::V4).await.expect("b answers");
            assert_eq!(down.asked(), asked + 1, "paused for {pause} s");
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttling_provider_is_paused_15_min_and_says_so() {
        let throttled = FakeSource::answering(ip(PUBLIC));
        throttled.throttle("HTTP 429");
        let up = FakeSource::answering(ip(PUBLIC));
        up.delay(Duration::from_millis(1));
        let detector = Detector::with_sources(
            &settings(1),
            [
                FakeSource::spec("https://a.example.net/ip#a", &throttled),
                FakeSource::spec("https://b.example.org/ip#b", &up),
            ],
        );
        detector.detect(Family::V4).await.expect("b answers");
        // Now b says what no rule accepts: the failure lists both, the first as paused.
        up.set(ip("10.0.0.1"));
        tokio::time::advance(Duration::from_secs(15 * 60) - Duration::from_millis(2)).await;
        let e = detector
            .detect(Family::V4)
            .await
            .expect_err("b is rejected");
        assert_eq!(throttled.asked(), 1);
        assert_eq!(
            e.to_string(),
            "the ipv4 egress address could not be determined (fewer than 1 operators agreed): \
             https://a.example.net/ip#a was paused after failures; https://b.example.org/ip#b \
             was rejected: 10.0.0.1 is private (RFC 1918) \
             (SENDSMS_ALLOW_NON_PUBLIC_IPS=true accepts it)"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        let e = detector
            .detect(Family::V4)
            .await
            .expect_err("b is rejected");
        assert_eq!(throttled.asked(), 2);
        assert!(
            e.to_string()
                .contains("https://a.example.net/ip#a failed: HTTP 429 (paused)"),
            "{e}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backing_off_never_makes_the_quorum_impossible() {
        let down = FakeSource::answering(ip(PUBLIC));
        down.fail("connection refused");
        let up = FakeSource::answering(ip(PUBLIC));
        let detector = Detector::with_sources(
            &settings(2),
            [
                FakeSource::spec("https://a.example.net/ip#a", &down),
                FakeSource::spec("https://b.example.org/ip#b", &up),
            ],
        );
        for round in 1..=3 {
            let e = detector
                .detect(Family::V4)
                .await
                .expect_err("one operator left");
            // Paused, it is asked anyway: without it no quorum of two could form.
            assert_eq!(down.asked(), round, "{e}");
            assert!(
                e.to_string()
                    .contains("https://a.example.net/ip#a failed: connection refused"),
                "{e}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_that_does_not_answer_fails_after_the_timeout() {
        let hanging = FakeSource::answering(ip(PUBLIC));
        hanging.delay(Duration::from_secs(3600));
        let detector = Detector::with_sources(
            &settings(1),
            [FakeSource::spec("https://a.example.net/ip#a", &hanging)],
        );
        assert_eq!(detector.timeout(), Duration::from_secs(5));
        let started = Instant::now();
        let e = detector.detect(Family::V4).await.expect_err("timed out");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(e.answers[0].1, Answer::Failed("timed out".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn disagreement_is_a_failure_or_a_warning_never_silent() {
        let (honest, liar) = (
            FakeSource::answering(ip(PUBLIC)),
            FakeSource::answering(ip("1.1.1.1")),
        );
        // The honest ones answer last, so the liar's vote is in when the quorum forms.
        honest.delay(Duration::from_millis(1));
        let detector = Detector::with_sources(
            &settings(2),
            [
                FakeSource::spec("https://a.example.net/ip#a", &honest),
                FakeSource::spec("https://b.example.org/ip#b", &honest),
                FakeSource::spec("https://c.example.com/ip#c", &liar),
            ],
        );
        let logs = Logs::capture();
        let found = detector.detect(Family::V4).await.expect("two against one");
        assert_eq!(
            (found.ip, found.operators),
            (ip(PUBLIC), vec!["a".into(), "b".into()])
        );
        assert!(
            logs.text()
                .contains("providers disagree; the minority is ignored"),
            "{}",
            logs.text()
        );
        let agreeing = Detector::with_sources(
            &settings(2),
            [
                FakeSource::spec("https://a.example.net/ip#a", &honest),
                FakeSource::spec("https://b.example.org/ip#b", &honest),
            ],
        );
        let before = logs.text().len();
        agreeing.detect(Family::V4).await.expect("agreed");
        assert!(
            !logs.text()[before..].contains("disagree"),
            "{}",
            logs.text()
        );
        // A tie is a failure that says so; too few votes for one address says that instead.
        let tie = Detector::with_sources(
            &settings(2),
            [
                FakeSource::spec("https://a.example.net/ip#a", &honest),
                FakeSource::spec("https://c.example.com/ip#c", &liar),
            ],
        );
        let e = tie.detect(Family::V4).await.expect_err("a tie");
        assert_eq!(
            e.problem,
            "providers disagree and no address has 2 operators behind it alone"
        );
    }
}
