//! Public-IP detection: ask HTTPS, DNS and interface providers at once; settle on a quorum of operators.

mod dns;
mod http;
mod iface;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::rr::{DNSClass, RecordType};
use tokio::task::JoinSet;
use url::Url;

pub use dns::{DnsQuery, address_in};
pub use http::parse_echo;

use crate::config::DetectionConfig;

/// An address family; each is detected over its own transport.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Family {
    #[serde(rename = "ipv4")]
    V4,
    #[serde(rename = "ipv6")]
    V6,
}

impl Family {
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// The unspecified address of this family: binding to it pins the transport to the family.
    pub fn unspecified(self) -> IpAddr {
        match self {
            Family::V4 => IpAddr::from([0u8; 4]),
            Family::V6 => IpAddr::from([0u16; 8]),
        }
    }
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    /// An HTTP(S) echo service.
    Http(Url),
    /// A DNS whoami name on one named server.
    Dns(DnsQuery),
    /// A local interface's own address.
    Iface(String),
}

/// One configured source of "your address is ...", with the operator that runs it: a quorum
/// counts operators, not URLs, so two names of one company are one vote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderSpec {
    pub kind: ProviderKind,
    pub operator: String,
    text: String,
}

impl ProviderSpec {
    pub const EXPECTED: &'static str = "comma-separated providers: https://HOST/PATH, \
         dns://SERVER[:PORT]/NAME?type=A|AAAA|TXT&class=IN|CH, or iface:NAME; \
         an optional #OPERATOR suffix names who runs it";

    /// The one family this provider can answer for, when its transport fixes it.
    pub fn family(&self) -> Option<Family> {
        match &self.kind {
            ProviderKind::Http(url) => match url.host() {
                Some(url::Host::Ipv4(_)) => Some(Family::V4),
                Some(url::Host::Ipv6(_)) => Some(Family::V6),
                _ => None,
            },
            ProviderKind::Dns(query) => Some(Family::of(query.server.ip())),
            ProviderKind::Iface(_) => None,
        }
    }
}

impl FromStr for ProviderSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let (body, operator) = match text.split_once('#') {
            Some((body, op)) if !op.trim().is_empty() => {
                (body, Some(op.trim().to_ascii_lowercase()))
            }
            Some(_) => return Err("an empty #OPERATOR".into()),
            None => (text, None),
        };
        let (kind, derived) = if let Some(name) = body.strip_prefix("iface:") {
            if name.is_empty() || name.len() > 15 || !name.chars().all(|c| c.is_ascii_graphic()) {
                return Err("iface: needs an interface name such as eth0".into());
            }
            (
                ProviderKind::Iface(name.to_owned()),
                format!("iface:{name}"),
            )
        } else {
            let url = Url::parse(body).map_err(|e| e.to_string())?;
            match url.scheme() {
                "http" | "https" => {
                    let host = url.host_str().ok_or("a URL without a host")?.to_owned();
                    (ProviderKind::Http(url), registrable(&host))
                }
                "dns" => {
                    let query = parse_dns(&url)?;
                    let operator = registrable(query.name.trim_end_matches('.'));
                    (ProviderKind::Dns(query), operator)
                }
                other => return Err(format!("unsupported scheme {other:?}")),
            }
        };
        Ok(ProviderSpec {
            kind,
            operator: operator.unwrap_or(derived),
            text: text.to_owned(),
        })
    }
}

impl fmt::Display for ProviderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The operator a host name most likely belongs to: its last two labels (an IP stays whole).
fn registrable(host: &str) -> String {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    if host.parse::<IpAddr>().is_ok() {
        return host;
    }
    let labels: Vec<&str> = host.split('.').filter(|l| !l.is_empty()).collect();
    if labels.is_empty() {
        return host;
    }
    labels[labels.len().saturating_sub(2)..].join(".")
}

fn parse_dns(url: &Url) -> Result<DnsQuery, String> {
    // `dns` is not a special scheme, so the url crate keeps IPv4 hosts as text: parse them here.
    let host = url.host_str().ok_or("dns:// needs a server address")?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| "the DNS server must be an IP address (a name would need DNS to find it)")?;
    let name = url.path().trim_start_matches('/');
    if name.is_empty() {
        return Err("dns:// needs a name to look up, as in dns://1.1.1.1/whoami.cloudflare".into());
    }
    let mut record = RecordType::A;
    let mut class = DNSClass::IN;
    for (key, value) in url.query_pairs() {
        match (key.as_ref(), value.to_ascii_uppercase().as_str()) {
            ("type", "A") => record = RecordType::A,
            ("type", "AAAA") => record = RecordType::AAAA,
            ("type", "TXT") => record = RecordType::TXT,
            ("class", "IN") => class = DNSClass::IN,
            ("class", "CH") => class = DNSClass::CH,
            _ => {
                return Err(format!(
                    "unknown {key}={value}; expected type=A|AAAA|TXT and class=IN|CH"
                ));
            }
        }
    }
    Ok(DnsQuery {
        server: SocketAddr::new(ip, url.port().unwrap_or(53)),
        name: format!("{}.", name.trim_end_matches('.')),
        record,
        class,
    })
}

/// The built-in public providers (the README lists them): seven operators, HTTPS and DNS,
/// IPv4 and IPv6.
pub const DEFAULT_PROVIDERS: &[&str] = &[
    "https://api.ipify.org#ipify",
    "https://api6.ipify.org#ipify",
    "https://ipv4.icanhazip.com#cloudflare",
    "https://ipv6.icanhazip.com#cloudflare",
    "https://checkip.amazonaws.com#amazon",
    "https://v4.ident.me#ident.me",
    "https://v6.ident.me#ident.me",
    "dns://1.1.1.1/whoami.cloudflare?type=TXT&class=CH#cloudflare",
    "dns://[2606:4700:4700::1111]/whoami.cloudflare?type=TXT&class=CH#cloudflare",
    "dns://208.67.222.222/myip.opendns.com?type=A#opendns",
    "dns://[2620:119:35::35]/myip.opendns.com?type=AAAA#opendns",
    "dns://216.239.32.10/o-o.myaddr.l.google.com?type=TXT#google",
    "dns://[2001:4860:4802:32::a]/o-o.myaddr.l.google.com?type=TXT#google",
    "dns://193.108.88.1/whoami.akamai.net?type=A#akamai",
];

pub fn default_providers() -> Vec<ProviderSpec> {
    DEFAULT_PROVIDERS
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A provider's failure; `Throttled` (HTTP 403/429) pauses it for longer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderError {
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

pub type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<IpAddr, ProviderError>> + Send + 'a>>;

/// What every provider kind implements: one lookup over the given family's transport.
pub trait IpSource: Send + Sync {
    fn lookup(&self, family: Family) -> LookupFuture<'_>;
}

/// What one provider said in one round.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Address(IpAddr),
    Rejected(String),
    Failed(String),
    /// Still running when the round ended.
    NoAnswer,
    /// Skipped: backing off after earlier failures.
    Paused,
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Answer::Address(ip) => write!(f, "said {ip}"),
            Answer::Rejected(why) => write!(f, "was rejected: {why}"),
            Answer::Failed(why) => write!(f, "failed: {why}"),
            Answer::NoAnswer => f.write_str("had not answered"),
            Answer::Paused => f.write_str("was paused after failures"),
        }
    }
}

/// A settled address and the operators that agreed on it.
#[derive(Clone, Debug)]
pub struct Detection {
    pub ip: IpAddr,
    pub operators: Vec<String>,
    pub elapsed: Duration,
}

/// Detection failed; says what each provider answered so an operator can see who disagreed.
#[derive(Debug, thiserror::Error)]
#[error("the {family} egress address could not be determined ({problem}): {}", summarize(.answers))]
pub struct DetectError {
    pub family: Family,
    pub problem: String,
    pub answers: Vec<(String, Answer)>,
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

const FAILURE_PAUSE: Duration = Duration::from_secs(30);
const MAX_FAILURE_PAUSE: Duration = Duration::from_secs(30 * 60);
const THROTTLE_PAUSE: Duration = Duration::from_secs(15 * 60);

struct Provider {
    spec: ProviderSpec,
    source: Arc<dyn IpSource>,
    health: Mutex<[Health; 2]>,
}

impl Provider {
    fn health(&self, family: Family) -> Health {
        let slots = self.health.lock().unwrap_or_else(|p| p.into_inner());
        slots[family as usize]
    }

    fn record(&self, family: Family, outcome: Option<&ProviderError>) {
        let mut slots = self.health.lock().unwrap_or_else(|p| p.into_inner());
        let health = &mut slots[family as usize];
        match outcome {
            None => *health = Health::default(),
            Some(error) => {
                health.failures = health.failures.saturating_add(1);
                let pause = match error {
                    ProviderError::Throttled(_) => THROTTLE_PAUSE,
                    ProviderError::Failed(_) => FAILURE_PAUSE
                        .saturating_mul(1 << health.failures.saturating_sub(1).min(8))
                        .min(MAX_FAILURE_PAUSE),
                };
                health.paused_until = Some(Instant::now() + pause);
            }
        }
    }
}

pub struct Detector {
    providers: Vec<Arc<Provider>>,
    quorum: usize,
    allow_non_public: bool,
    timeout: Duration,
}

impl Detector {
    pub fn new(config: &DetectionConfig) -> Self {
        let timeout = config.timeout;
        let echo_clients = Arc::new(http::EchoClients::new(timeout));
        let providers = config
            .providers
            .iter()
            .map(|spec| {
                let source: Arc<dyn IpSource> = match &spec.kind {
                    ProviderKind::Http(url) => {
                        Arc::new(http::HttpEcho::new(url.clone(), Arc::clone(&echo_clients)))
                    }
                    ProviderKind::Dns(query) => {
                        Arc::new(dns::DnsWhoami::new(query.clone(), timeout))
                    }
                    ProviderKind::Iface(name) => {
                        Arc::new(iface::InterfaceAddress::new(name.clone()))
                    }
                };
                Arc::new(Provider {
                    spec: spec.clone(),
                    source,
                    health: Mutex::new([Health::default(); 2]),
                })
            })
            .collect();
        Detector {
            providers,
            quorum: config.quorum,
            allow_non_public: config.allow_non_public,
            timeout,
        }
    }

    /// Asks every provider of the family at once, each with its own timeout, and settles as
    /// soon as `quorum` operators agree on one address that no other address matches; the
    /// providers still running are then abandoned.
    pub async fn detect(&self, family: Family) -> Result<Detection, DetectError> {
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
        let asked = if operators_of(&ready) >= self.quorum {
            ready
        } else {
            serving.clone()
        };

        let mut answers: Vec<(String, Answer)> = serving
            .iter()
            .map(|p| {
                let answer = if asked.iter().any(|a| Arc::ptr_eq(a, p)) {
                    Answer::NoAnswer
                } else {
                    Answer::Paused
                };
                (p.spec.to_string(), answer)
            })
            .collect();
        let mut votes: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
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
        match validate::non_public_reason(ip) {
            Some(reason) if !self.allow_non_public => Err(format!(
                "{ip} is {reason} (SENDSMS_ALLOW_NON_PUBLIC_IPS=true accepts it)"
            )),
            _ => Ok(ip),
        }
    }
}

fn operators_of(providers: &[&Arc<Provider>]) -> usize {
    let mut operators: Vec<&str> = providers.iter().map(|p| p.spec.operator.as_str()).collect();
    operators.sort_unstable();
    operators.dedup();
    operators.len()
}

/// The address with at least `quorum` operators that strictly leads every other address.
fn settled(votes: &BTreeMap<IpAddr, Vec<String>>, quorum: usize) -> Option<IpAddr> {
    let (leader, count) = votes
        .iter()
        .map(|(ip, v)| (*ip, v.len()))
        .max_by_key(|(_, n)| *n)?;
    let contested = votes
        .iter()
        .any(|(ip, v)| *ip != leader && v.len() >= count);
    (count >= quorum && !contested).then_some(leader)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_specs() {
        let dns: ProviderSpec = "dns://1.1.1.1/whoami.cloudflare?type=TXT&class=CH#cloudflare"
            .parse()
            .expect("dns");
        let ProviderKind::Dns(query) = &dns.kind else {
            panic!("{dns:?}")
        };
        assert_eq!(query.server, "1.1.1.1:53".parse().expect("addr"));
        assert_eq!((query.record, query.class), (RecordType::TXT, DNSClass::CH));
        assert_eq!(dns.operator, "cloudflare");
        assert_eq!(dns.family(), Some(Family::V4));

        let v6: ProviderSpec = "dns://[2620:119:35::35]:5353/myip.opendns.com?type=AAAA"
            .parse()
            .expect("v6");
        let ProviderKind::Dns(query) = &v6.kind else {
            panic!("{v6:?}")
        };
        assert_eq!(
            query.server,
            "[2620:119:35::35]:5353".parse().expect("addr")
        );
        assert_eq!(v6.operator, "opendns.com");
        assert_eq!(v6.family(), Some(Family::V6));

        let http: ProviderSpec = "https://api.ipify.org".parse().expect("http");
        assert_eq!((http.operator.as_str(), http.family()), ("ipify.org", None));
        let iface: ProviderSpec = "iface:eth0".parse().expect("iface");
        assert_eq!(iface.kind, ProviderKind::Iface("eth0".into()));

        for bad in [
            "ftp://x",
            "dns://resolver.example/whoami",
            "dns://1.1.1.1/",
            "dns://1.1.1.1/x?type=MX",
            "iface:",
            "https://x#",
            "nonsense",
        ] {
            assert!(bad.parse::<ProviderSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_have_enough_operators_per_family() {
        let all = default_providers();
        assert_eq!(
            all.len(),
            DEFAULT_PROVIDERS.len(),
            "every built-in spec parses"
        );
        for family in [Family::V4, Family::V6] {
            let mut ops: Vec<&str> = all
                .iter()
                .filter(|p| p.family().is_none_or(|f| f == family))
                .map(|p| p.operator.as_str())
                .collect();
            ops.sort_unstable();
            ops.dedup();
            assert!(ops.len() >= 4, "{family}: {ops:?}");
        }
    }

    #[test]
    fn quorum_needs_a_strict_leader() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let mut votes = BTreeMap::new();
        votes.insert(ip("203.0.113.1"), vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(settled(&votes, 2), Some(ip("203.0.113.1")));
        assert_eq!(settled(&votes, 3), None);
        votes.insert(ip("198.51.100.1"), vec!["c".to_owned(), "d".to_owned()]);
        assert_eq!(settled(&votes, 2), None, "a tie is a disagreement");
    }
}
