//! Public-IP detection: ask the configured providers which address this host leaves from.

mod http;
pub mod validate;

use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use url::Url;

use crate::config::DetectionConfig;

/// An address family; each is detected over its own transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
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

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        })
    }
}

/// One configured source of "your address is ...".
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderSpec {
    /// An HTTP(S) echo service.
    Http(Url),
}

impl ProviderSpec {
    pub const EXPECTED: &'static str =
        "comma-separated provider URLs such as https://api.ipify.org";
}

impl FromStr for ProviderSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = Url::parse(s).map_err(|e| e.to_string())?;
        match url.scheme() {
            "http" | "https" if url.host_str().is_some() => Ok(ProviderSpec::Http(url)),
            other => Err(format!("unsupported provider scheme {other:?}")),
        }
    }
}

impl fmt::Display for ProviderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProviderSpec::Http(url) => write!(f, "{url}"),
        }
    }
}

/// The built-in public providers, used when `SENDSMS_IP_PROVIDERS` is not set.
pub fn default_providers() -> Vec<ProviderSpec> {
    [
        "https://api.ipify.org",
        "https://ipv4.icanhazip.com",
        "https://checkip.amazonaws.com",
    ]
    .iter()
    .filter_map(|s| s.parse().ok())
    .collect()
}

pub type LookupFuture<'a> = Pin<Box<dyn Future<Output = Result<IpAddr, String>> + Send + 'a>>;

/// What every provider kind implements: one lookup over the given family's transport.
pub trait IpSource: Send + Sync {
    fn lookup(&self, family: Family) -> LookupFuture<'_>;
}

/// Detection failed; says what each provider answered so an operator can see who disagreed.
#[derive(Debug, thiserror::Error)]
#[error("the {family} egress address could not be determined: {}", summarize(.answers))]
pub struct DetectError {
    pub family: Family,
    pub answers: Vec<(String, String)>,
}

fn summarize(answers: &[(String, String)]) -> String {
    if answers.is_empty() {
        return "no provider answered".to_owned();
    }
    answers
        .iter()
        .map(|(p, a)| format!("{p} said {a}"))
        .collect::<Vec<_>>()
        .join("; ")
}

pub struct Detector {
    sources: Vec<(String, Arc<dyn IpSource>)>,
    allow_non_public: bool,
}

impl Detector {
    pub fn new(config: &DetectionConfig, timeout: Duration) -> Self {
        let sources = config
            .providers
            .iter()
            .map(|spec| {
                let source: Arc<dyn IpSource> = match spec {
                    ProviderSpec::Http(url) => Arc::new(http::HttpEcho::new(url.clone(), timeout)),
                };
                (spec.to_string(), source)
            })
            .collect();
        Detector {
            sources,
            allow_non_public: config.allow_non_public,
        }
    }

    /// Asks every provider at once and settles on the first valid answer.
    pub async fn detect(&self, family: Family) -> Result<IpAddr, DetectError> {
        let mut pending = JoinSet::new();
        for (name, source) in &self.sources {
            let (name, source) = (name.clone(), Arc::clone(source));
            pending.spawn(async move { (name, source.lookup(family).await) });
        }
        let mut answers = Vec::new();
        while let Some(joined) = pending.join_next().await {
            let Ok((name, result)) = joined else { continue };
            match result.and_then(|ip| self.accept(family, ip)) {
                Ok(ip) => return Ok(ip),
                Err(why) => answers.push((name, why)),
            }
        }
        Err(DetectError { family, answers })
    }

    fn accept(&self, family: Family, ip: IpAddr) -> Result<IpAddr, String> {
        let ip = ip.to_canonical();
        if Family::of(ip) != family {
            return Err(format!("{ip}, which is not {family}"));
        }
        match validate::non_public_reason(ip) {
            Some(reason) if !self.allow_non_public => Err(format!(
                "{ip}, which is {reason} (set SENDSMS_ALLOW_NON_PUBLIC_IPS=true to accept it)"
            )),
            _ => Ok(ip),
        }
    }
}
