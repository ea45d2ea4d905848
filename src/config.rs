//! Configuration: read the `SENDSMS_*` environment once, validate every value, name the culprit.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use crate::detect::{Family, ProviderSpec};

pub const ENV_PREFIX: &str = "SENDSMS_";
pub const DEFAULT_API_URL: &str = "https://api.sendsms.ro/json";

/// A configuration problem; the message names the variable and what a right value looks like.
/// It never repeats a secret's value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var} is required: {hint}")]
    Missing { var: String, hint: &'static str },
    #[error("{var} is invalid ({problem}); expected {expected}")]
    Invalid {
        var: String,
        problem: String,
        expected: &'static str,
    },
    #[error("{a} and {b} are both set; set only one of them")]
    Conflict { a: String, b: String },
    #[error("{var} names a file that cannot be read ({path}): {source}")]
    UnreadableFile {
        var: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the SENDSMS_* variables cannot be read ({0}); set each one once, in upper case")]
    Environment(String),
}

/// The process environment; a non-UTF-8 variable is skipped (ours are all UTF-8).
pub fn utf8_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

fn var(name: &str) -> String {
    format!("{ENV_PREFIX}{}", name.to_ascii_uppercase())
}

fn invalid(name: &str, problem: impl Into<String>, expected: &'static str) -> ConfigError {
    ConfigError::Invalid {
        var: var(name),
        problem: problem.into(),
        expected,
    }
}

/// The account user name and the IP-locked API key; the key never shows in `Debug`.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub api_key: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("api_key", &"[REDACTED]")
            .finish()
    }
}

/// A URL that may carry `user:password@` (a proxy, a Redis server): only scheme, host, port and
/// path are ever shown.
#[derive(Clone)]
pub struct SecretUrl(SecretString);

/// The bootstrap proxy.
pub type ProxyUrl = SecretUrl;
/// The coordination store.
pub type RedisUrl = SecretUrl;

impl SecretUrl {
    pub fn from_secret(value: SecretString) -> Self {
        SecretUrl(value)
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Ok(url) = Url::parse(self.expose()) else {
            return f.write_str("[url]");
        };
        let default_port = match url.scheme() {
            "redis" | "rediss" => 6379,
            _ => 0,
        };
        write!(
            f,
            "{}://{}:{}{}",
            url.scheme(),
            url.host_str().unwrap_or("?"),
            url.port_or_known_default().unwrap_or(default_port),
            url.path().trim_end_matches('/')
        )
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

/// How `token_add_ip` reaches the API: the already-authorized route.
#[derive(Clone, Debug, Default)]
pub struct BootstrapPath {
    pub proxy: Option<ProxyUrl>,
    pub bind: Option<IpAddr>,
}

impl BootstrapPath {
    pub fn is_direct(&self) -> bool {
        self.proxy.is_none() && self.bind.is_none()
    }
}

impl std::fmt::Display for BootstrapPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.proxy, &self.bind) {
            (None, None) => f.write_str("the direct route"),
            (Some(p), None) => write!(f, "bootstrap proxy {p}"),
            (None, Some(b)) => write!(f, "bootstrap bind address {b}"),
            (Some(p), Some(b)) => write!(f, "bootstrap proxy {p} from {b}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Clone, Debug)]
pub struct DetectionConfig {
    pub providers: Vec<ProviderSpec>,
    pub quorum: usize,
    pub families: Vec<Family>,
    pub allow_non_public: bool,
    /// Each provider's own timeout.
    pub timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub credentials: Credentials,
    pub api_url: Url,
    pub bootstrap: BootstrapPath,
    pub detection: DetectionConfig,
    pub verify_timeout: Duration,
    pub request_timeout: Duration,
    pub poll_interval: Duration,
    pub reverify_interval: Duration,
    pub api_budget: u32,
    pub state_file: Option<PathBuf>,
    pub listen: SocketAddr,
    pub log_format: Option<LogFormat>,
    pub recheck_min_interval: Duration,
    pub recheck_allow_remote: bool,
    pub coordination: Coordination,
    /// How long a member's whitelist lease lasts unless renewed; a member that dies holding it
    /// delays the others by at most this.
    pub coordination_lease: Duration,
}

/// Where fleet members share whitelist records, leases and the API budget (`SENDSMS_COORDINATION`).
#[derive(Clone, Debug, Default)]
pub enum Coordination {
    #[default]
    None,
    /// Members on one host share a directory.
    File(PathBuf),
    /// Members anywhere share a Redis server.
    Redis(RedisUrl),
}

impl Coordination {
    pub fn mode(&self) -> &'static str {
        match self {
            Coordination::None => "none",
            Coordination::File(_) => "file",
            Coordination::Redis(_) => "redis",
        }
    }
}

/// The raw environment, as envy reads it: strings only, so every value gets our own
/// validation and an error that names its variable without echoing a secret.
#[derive(Deserialize, Default)]
struct RawEnv {
    username: Option<String>,
    username_file: Option<PathBuf>,
    api_key: Option<String>,
    api_key_file: Option<PathBuf>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    api_url: Option<String>,
    allow_insecure_api_url: Option<String>,
    bootstrap_proxy: Option<String>,
    bootstrap_bind: Option<String>,
    ip_providers: Option<String>,
    ip_quorum: Option<String>,
    ip_families: Option<String>,
    allow_non_public_ips: Option<String>,
    verify_timeout: Option<String>,
    request_timeout: Option<String>,
    poll_interval: Option<String>,
    reverify_interval: Option<String>,
    api_budget: Option<String>,
    state_file: Option<PathBuf>,
    listen: Option<String>,
    log_format: Option<String>,
    recheck_min_interval: Option<String>,
    recheck_allow_remote: Option<String>,
    coordination: Option<String>,
    coordination_lease: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(utf8_env())
    }

    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        RawEnv::load(vars)?.validate()
    }
}

impl DetectionConfig {
    /// Only what detection needs: `detect` runs without credentials.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        RawEnv::load(vars)?.detection()
    }
}

impl RawEnv {
    fn load(vars: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        // Empty values count as unset, as shells and compose files often leave `VAR=`.
        let vars: HashMap<String, String> = vars
            .into_iter()
            // Upper case only, as documented: envy folds case, so `SENDSMS_api_key` beside
            // `SENDSMS_API_KEY` would otherwise collide.
            .filter(|(k, v)| {
                k.starts_with(ENV_PREFIX) && *k == k.to_ascii_uppercase() && !v.trim().is_empty()
            })
            .collect();
        envy::prefixed(ENV_PREFIX)
            .from_iter(vars)
            .map_err(|e| ConfigError::Environment(e.to_string()))
    }

    fn detection(&mut self) -> Result<DetectionConfig, ConfigError> {
        let providers = match self.ip_providers.take() {
            Some(list) => parse_providers(&list)?,
            None => crate::detect::default_providers(),
        };
        let families = match self.ip_families.take() {
            Some(v) => parse_families(&v)?,
            None => vec![Family::V4],
        };
        Ok(DetectionConfig {
            providers,
            quorum: parse_number("ip_quorum", self.ip_quorum.take(), 2, 1..=16)? as usize,
            families,
            allow_non_public: parse_bool("allow_non_public_ips", self.allow_non_public_ips.take())?,
            timeout: parse_duration("request_timeout", self.request_timeout.clone(), "10s")?,
        })
    }

    fn validate(mut self) -> Result<Config, ConfigError> {
        let detection = self.detection()?;
        let username =
            secret_or_file("username", self.username, self.username_file)?.ok_or_else(|| {
                ConfigError::Missing {
                    var: var("username"),
                    hint: "the sendSMS account user name (or SENDSMS_USERNAME_FILE)",
                }
            })?;
        let key = secret_or_file("api_key", self.api_key, self.api_key_file)?;
        let password = secret_or_file("password", self.password, self.password_file)?;
        let api_key = match (key, password) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict {
                    a: var("api_key"),
                    b: var("password"),
                });
            }
            (Some(k), None) | (None, Some(k)) => k,
            (None, None) => {
                return Err(ConfigError::Missing {
                    var: var("api_key"),
                    hint: "the IP-locked sendSMS API key (or SENDSMS_API_KEY_FILE; SENDSMS_PASSWORD is an alias)",
                });
            }
        };
        let allow_insecure = parse_bool("allow_insecure_api_url", self.allow_insecure_api_url)?;
        let api_url = parse_api_url(self.api_url.as_deref(), allow_insecure)?;
        let bootstrap = BootstrapPath {
            proxy: self.bootstrap_proxy.map(parse_proxy).transpose()?,
            bind: self
                .bootstrap_bind
                .map(|v| {
                    v.trim().parse::<IpAddr>().map_err(|_| {
                        invalid(
                            "bootstrap_bind",
                            "not an IP address",
                            "a local IP address such as 10.0.0.5",
                        )
                    })
                })
                .transpose()?,
        };
        Ok(Config {
            credentials: Credentials {
                username: username.expose_secret().to_owned(),
                api_key,
            },
            api_url,
            bootstrap,
            detection,
            verify_timeout: parse_duration("verify_timeout", self.verify_timeout, "120s")?,
            request_timeout: parse_duration("request_timeout", self.request_timeout, "10s")?,
            poll_interval: parse_duration("poll_interval", self.poll_interval, "60s")?,
            reverify_interval: parse_duration("reverify_interval", self.reverify_interval, "6h")?,
            api_budget: parse_number("api_budget", self.api_budget, 8, 1..=600)?,
            state_file: self.state_file,
            listen: parse_listen(self.listen)?,
            log_format: match self.log_format.as_deref().map(str::trim) {
                None => None,
                Some(v) if v.eq_ignore_ascii_case("json") => Some(LogFormat::Json),
                Some(v) if v.eq_ignore_ascii_case("text") => Some(LogFormat::Text),
                Some(_) => return Err(invalid("log_format", "unknown format", "json or text")),
            },
            recheck_min_interval: parse_duration(
                "recheck_min_interval",
                self.recheck_min_interval,
                "10s",
            )?,
            recheck_allow_remote: parse_bool("recheck_allow_remote", self.recheck_allow_remote)?,
            coordination: parse_coordination(self.coordination)?,
            coordination_lease: parse_duration(
                "coordination_lease",
                self.coordination_lease,
                "15s",
            )?,
        })
    }
}

/// A value given directly or through `NAME_FILE` (Kubernetes and Docker secrets), never both.
fn secret_or_file(
    name: &str,
    direct: Option<String>,
    file: Option<PathBuf>,
) -> Result<Option<SecretString>, ConfigError> {
    match (direct, file) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict {
            a: var(name),
            b: var(&format!("{name}_file")),
        }),
        (Some(v), None) => Ok(Some(SecretString::from(v.trim().to_owned()))),
        (None, Some(path)) => {
            let content =
                std::fs::read_to_string(&path).map_err(|source| ConfigError::UnreadableFile {
                    var: var(&format!("{name}_file")),
                    path: path.clone(),
                    source,
                })?;
            let value = content.trim();
            if value.is_empty() {
                return Err(invalid(
                    &format!("{name}_file"),
                    format!("{} is empty", path.display()),
                    "a file holding the value",
                ));
            }
            Ok(Some(SecretString::from(value.to_owned())))
        }
        (None, None) => Ok(None),
    }
}

const COORDINATION_EXPECTED: &str =
    "none, file:/an/absolute/directory, redis://HOST:PORT/DB or rediss://HOST:PORT/DB";

fn parse_coordination(value: Option<String>) -> Result<Coordination, ConfigError> {
    let Some(text) = value.map(|v| v.trim().to_owned()) else {
        return Ok(Coordination::None);
    };
    if text.eq_ignore_ascii_case("none") {
        return Ok(Coordination::None);
    }
    if let Some(dir) = text.strip_prefix("file:") {
        let dir = PathBuf::from(dir);
        if !dir.is_absolute() {
            return Err(invalid(
                "coordination",
                "a file: directory must be an absolute path",
                COORDINATION_EXPECTED,
            ));
        }
        return Ok(Coordination::File(dir));
    }
    // The URL may hold a password: problems are described, the value never repeated.
    let url = Url::parse(&text).map_err(|e| {
        invalid(
            "coordination",
            format!("not a mode or URL ({e})"),
            COORDINATION_EXPECTED,
        )
    })?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(invalid(
            "coordination",
            format!("unknown scheme {:?}", url.scheme()),
            COORDINATION_EXPECTED,
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(
            "coordination",
            "the Redis URL names no host",
            COORDINATION_EXPECTED,
        ));
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(invalid(
            "coordination",
            format!("{db:?} is not a database number"),
            COORDINATION_EXPECTED,
        ));
    }
    Ok(Coordination::Redis(SecretUrl(SecretString::from(text))))
}

/// `SENDSMS_LISTEN`, also read alone by `health`, which needs nothing else.
pub fn parse_listen(value: Option<String>) -> Result<SocketAddr, ConfigError> {
    match value {
        Some(v) => v.trim().parse().map_err(|_| {
            invalid(
                "listen",
                format!("{v:?} is not a socket address"),
                "ADDRESS:PORT such as 0.0.0.0:9797",
            )
        }),
        None => Ok(SocketAddr::from(([0, 0, 0, 0], 9797))),
    }
}

fn parse_bool(name: &str, value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref().map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) => match v.as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(invalid(
                name,
                format!("{v:?} is not a boolean"),
                "true or false",
            )),
        },
    }
}

fn parse_duration(
    name: &str,
    value: Option<String>,
    default: &str,
) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_owned());
    let duration = humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            name,
            format!("{text:?}: {e}"),
            "a duration such as 90s, 5m or 1h30m",
        )
    })?;
    if duration.is_zero() {
        return Err(invalid(name, "zero", "a duration above zero such as 90s"));
    }
    // Durations are doubled, scaled and added to instants later: centuries would overflow.
    if duration > MAX_DURATION {
        return Err(invalid(
            name,
            format!("{text:?} is longer than 365 days"),
            "a duration of at most 365 days",
        ));
    }
    Ok(duration)
}

/// The longest duration any variable accepts.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

fn parse_number(
    name: &str,
    value: Option<String>,
    default: u32,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ConfigError> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.trim().parse::<u32>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(ConfigError::Invalid {
            var: var(name),
            problem: format!(
                "{text:?} is not a whole number from {} to {}",
                range.start(),
                range.end()
            ),
            expected: "a whole number in that range",
        }),
    }
}

fn parse_api_url(value: Option<&str>, allow_insecure: bool) -> Result<Url, ConfigError> {
    let text = value.unwrap_or(DEFAULT_API_URL).trim();
    let url = Url::parse(text).map_err(|e| {
        invalid(
            "api_url",
            e.to_string(),
            "a URL such as https://api.sendsms.ro/json",
        )
    })?;
    if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
        return Err(invalid(
            "api_url",
            "it carries credentials or a query string",
            "a bare endpoint URL; credentials come from SENDSMS_USERNAME and SENDSMS_API_KEY",
        ));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow_insecure || host_is_loopback(&url) => Ok(url),
        "http" => Err(invalid(
            "api_url",
            "plain http would send the API key in clear text",
            "an https:// URL (http:// only for a loopback host, or with SENDSMS_ALLOW_INSECURE_API_URL=true)",
        )),
        other => Err(invalid(
            "api_url",
            format!("scheme {other:?}"),
            "an https:// URL",
        )),
    }
}

pub fn host_is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn parse_proxy(value: String) -> Result<ProxyUrl, ConfigError> {
    let expected =
        "a proxy URL such as http://bastion:3128, https://bastion:3129 or socks5://bastion:1080";
    // The parse error is not shown: a malformed URL may still hold a password.
    let url =
        Url::parse(value.trim()).map_err(|_| invalid("bootstrap_proxy", "not a URL", expected))?;
    if !matches!(url.scheme(), "http" | "https" | "socks5" | "socks5h") || url.host_str().is_none()
    {
        return Err(invalid(
            "bootstrap_proxy",
            format!("scheme {:?} or host not supported", url.scheme()),
            expected,
        ));
    }
    Ok(SecretUrl(SecretString::from(value.trim().to_owned())))
}

fn parse_providers(list: &str) -> Result<Vec<ProviderSpec>, ConfigError> {
    let specs: Vec<ProviderSpec> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ProviderSpec>().map_err(|e| {
                invalid(
                    "ip_providers",
                    format!("{s:?}: {e}"),
                    ProviderSpec::EXPECTED,
                )
            })
        })
        .collect::<Result<_, _>>()?;
    if specs.is_empty() {
        return Err(invalid(
            "ip_providers",
            "the list is empty",
            ProviderSpec::EXPECTED,
        ));
    }
    Ok(specs)
}

fn parse_families(value: &str) -> Result<Vec<Family>, ConfigError> {
    let mut families = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let family = match item.to_ascii_lowercase().as_str() {
            "ipv4" | "v4" | "4" => Family::V4,
            "ipv6" | "v6" | "6" => Family::V6,
            _ => {
                return Err(invalid(
                    "ip_families",
                    format!("{item:?}"),
                    "ipv4, ipv6 or ipv4,ipv6",
                ));
            }
        };
        if !families.contains(&family) {
            families.push(family);
        }
    }
    if families.is_empty() {
        return Err(invalid(
            "ip_families",
            "the list is empty",
            "ipv4, ipv6 or ipv4,ipv6",
        ));
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    const BASE: [(&str, &str); 3] = [
        ("SENDSMS_USERNAME", "alice"),
        ("SENDSMS_API_KEY", "s3cret-key"),
        ("SENDSMS_IP_PROVIDERS", "http://127.0.0.1:1/ip"),
    ];

    #[test]
    fn defaults_apply() {
        let c = env(&BASE).expect("valid config");
        assert_eq!(c.api_url.as_str(), DEFAULT_API_URL);
        assert_eq!(c.verify_timeout, Duration::from_secs(120));
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert!(c.bootstrap.is_direct());
        assert!(!c.detection.allow_non_public);
    }

    #[test]
    fn missing_username_names_the_variable() {
        let e = env(&[("SENDSMS_API_KEY", "k")]).unwrap_err().to_string();
        assert!(e.contains("SENDSMS_USERNAME"), "{e}");
    }

    #[test]
    fn bad_duration_names_the_variable() {
        let mut v = BASE.to_vec();
        v.push(("SENDSMS_VERIFY_TIMEOUT", "soon"));
        let e = env(&v).unwrap_err().to_string();
        assert!(
            e.contains("SENDSMS_VERIFY_TIMEOUT") && e.contains("90s"),
            "{e}"
        );
    }

    #[test]
    fn password_alias_and_conflict() {
        let c = env(&[("SENDSMS_USERNAME", "a"), ("SENDSMS_PASSWORD", "pw")]).expect("alias works");
        assert_eq!(c.credentials.api_key.expose_secret(), "pw");
        let e = env(&[
            ("SENDSMS_USERNAME", "a"),
            ("SENDSMS_PASSWORD", "pw"),
            ("SENDSMS_API_KEY", "k"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("SENDSMS_API_KEY") && e.contains("SENDSMS_PASSWORD"),
            "{e}"
        );
    }

    #[test]
    fn plain_http_only_for_loopback() {
        let mut v = BASE.to_vec();
        v.push(("SENDSMS_API_URL", "http://api.example.net/json"));
        assert!(env(&v).unwrap_err().to_string().contains("SENDSMS_API_URL"));
        v.pop();
        v.push(("SENDSMS_API_URL", "http://127.0.0.1:8089/json"));
        assert!(env(&v).is_ok());
    }

    #[test]
    fn secrets_stay_out_of_debug_and_errors() {
        let mut v = BASE.to_vec();
        v.push((
            "SENDSMS_BOOTSTRAP_PROXY",
            "http://user:proxypass@bastion:3128",
        ));
        let c = env(&v).expect("valid");
        let dbg = format!("{c:?}");
        assert!(
            !dbg.contains("s3cret-key") && !dbg.contains("proxypass"),
            "{dbg}"
        );
        assert!(dbg.contains("bastion"));
        let mut bad = BASE.to_vec();
        bad.push(("SENDSMS_BOOTSTRAP_PROXY", "ftp://user:proxypass@bastion"));
        let e = env(&bad).unwrap_err().to_string();
        assert!(!e.contains("proxypass"), "{e}");
    }

    #[test]
    fn coordination_modes_and_their_errors() {
        let with = |value: &str| {
            let mut v = BASE.to_vec();
            v.push(("SENDSMS_COORDINATION", value));
            env(&v)
        };
        assert!(matches!(
            env(&BASE).expect("valid").coordination,
            Coordination::None
        ));
        assert!(matches!(
            with("none").expect("valid").coordination,
            Coordination::None
        ));
        assert!(matches!(
            with("file:/var/lib/fleet").expect("valid").coordination,
            Coordination::File(dir) if dir == std::path::Path::new("/var/lib/fleet")
        ));
        let redis = with("rediss://:hunter2pw@cache.internal:6380/3").expect("valid");
        let shown = format!("{:?}", redis.coordination);
        assert!(shown.contains("rediss://cache.internal:6380/3"), "{shown}");
        assert!(!shown.contains("hunter2pw"), "{shown}");
        for (value, says) in [
            ("file:fleet", "absolute"),
            ("memcached://host", "unknown scheme"),
            ("redis:///0", "no host"),
            ("redis://:hunter2pw@/0", "empty host"),
            ("redis://:hunter2pw@host:6379/cache", "database number"),
            ("somewhere", "not a mode or URL"),
        ] {
            let e = with(value).unwrap_err().to_string();
            assert!(
                e.contains("SENDSMS_COORDINATION") && e.contains(says),
                "{value}: {e}"
            );
            assert!(!e.contains("hunter2pw"), "{e}");
        }
    }
}
