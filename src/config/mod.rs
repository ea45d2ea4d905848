//! Configuration: read the `SENDSMS_*` environment once, validate every value, and hand each part its own settings.

mod values;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::logging::LogFormat;
use crate::secret::Credentials;
use crate::state::StateFile;
use crate::{coord, detect, flow, gateway, notify, sendsms, server, sidecar};

use values::{
    MIN_INTERVAL, parse_api_url, parse_bool, parse_coordination, parse_duration,
    parse_duration_at_least, parse_extra_roots, parse_families, parse_heartbeat,
    parse_notify_events, parse_notify_urls, parse_number, parse_providers, parse_proxy,
    secret_or_file,
};
pub(crate) use values::{host_is_loopback, parse_listen};

const ENV_PREFIX: &str = "SENDSMS_";
const DEFAULT_API_URL: &str = "https://api.sendsms.ro/json";
/// A gateway token shorter than this is refused: it guards the account's SMS.
const MIN_TOKEN_CHARS: usize = 16;

/// A configuration problem; the message names the variable and what a right value looks like.
/// It never repeats a secret's value.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
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
    /// `access`: for a permission error, who the process runs as and who may read the file.
    #[error("{var} names a file that cannot be read ({path}): {source}{access}")]
    UnreadableFile {
        var: String,
        path: PathBuf,
        source: std::io::Error,
        access: String,
    },
    #[error(
        "SENDSMS_IP_QUORUM is {quorum}, but the providers in SENDSMS_IP_PROVIDERS are run by \
         fewer distinct operators ({counted}), so no address could ever be settled. Lower \
         SENDSMS_IP_QUORUM, add providers of other operators, or, where providers on one domain \
         are run by different operators, name each one's operator with a #OPERATOR suffix \
         (https://ip.example.net/#example)"
    )]
    QuorumUnreachable { quorum: usize, counted: String },
    #[error("the SENDSMS_* variables cannot be read ({0}); set each one once, in upper case")]
    Environment(String),
}

/// The process environment; a non-UTF-8 variable is skipped (ours are all UTF-8).
pub(crate) fn utf8_env() -> impl Iterator<Item = (String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
}

fn var(name: &str) -> String {
    format!("{ENV_PREFIX}{}", name.to_ascii_uppercase())
}

/// An error about a value read from `NAME_FILE` is blamed on the variable that was set:
/// `NAME_FILE`, not `NAME`.
fn blamed(from_file: bool) -> impl Fn(ConfigError) -> ConfigError {
    move |e| match e {
        ConfigError::Invalid {
            var,
            problem,
            expected,
        } if from_file => ConfigError::Invalid {
            var: format!("{var}_FILE"),
            problem,
            expected,
        },
        other => other,
    }
}

fn invalid(name: &str, problem: impl Into<String>, expected: &'static str) -> ConfigError {
    ConfigError::Invalid {
        var: var(name),
        problem: problem.into(),
        expected,
    }
}

/// The checked configuration of `run`, `once` and `check`, split into each part's settings,
/// so that every part sees only its own.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) flow: flow::Settings,
    pub(crate) detection: detect::Settings,
    pub(crate) sidecar: sidecar::Settings,
    pub(crate) server: server::Settings,
    /// None unless `SENDSMS_GATEWAY_LISTEN` is set.
    pub(crate) gateway: Option<gateway::Settings>,
    pub(crate) notify: notify::Settings,
    pub(crate) log_format: Option<LogFormat>,
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
    gateway_listen: Option<String>,
    gateway_token: Option<String>,
    gateway_token_file: Option<PathBuf>,
    gateway_hold: Option<String>,
    gateway_max_held: Option<String>,
    notify_urls: Option<String>,
    notify_urls_file: Option<PathBuf>,
    notify_events: Option<String>,
    heartbeat_url: Option<String>,
    heartbeat_url_file: Option<PathBuf>,
    extra_ca_file: Option<PathBuf>,
}

/// Every variable the configuration reads, as the user sets it (`SENDSMS_API_KEY`, ...),
/// derived from `RawEnv` itself so that no list can fall behind it.
pub(crate) fn variables() -> Vec<String> {
    use serde::de::{self, Visitor};

    /// A deserializer that only records the field names serde asks it for.
    struct Fields(&'static [&'static str]);

    impl<'de> de::Deserializer<'de> for &mut Fields {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("only a struct's field names are read"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("field names read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields = Fields(&[]);
    let _ = RawEnv::deserialize(&mut fields);
    fields.0.iter().map(|name| var(name)).collect()
}

impl Config {
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(utf8_env())
    }

    /// What only this host can tell: a bootstrap bind address must be one of its own. A bind
    /// to any other sends nothing, so every try would fail the same way; one socket bound and
    /// dropped here says so at once.
    pub(crate) fn check_host(&self) -> Result<(), ConfigError> {
        let Some(ip) = self.flow.api.bootstrap.bind else {
            return Ok(());
        };
        match std::net::UdpSocket::bind((ip, 0)) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Err(invalid(
                "bootstrap_bind",
                format!("{ip} is not an address of this host ({e})"),
                "an address of one of this host's interfaces (`ip addr` lists them), such as a \
                 second interface's or a VPN's, that is on the key's whitelist",
            )),
            _ => Ok(()),
        }
    }

    pub(crate) fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        RawEnv::load(vars)?.validate()
    }
}

/// Only the notification settings: `notify-test` runs without credentials.
pub(crate) fn notify_from_vars(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<notify::Settings, ConfigError> {
    RawEnv::load(vars)?.notify()
}

/// Only what detection needs: `detect` runs without credentials.
pub(crate) fn detection_from_vars(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<detect::Settings, ConfigError> {
    RawEnv::load(vars)?.detection()
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

    fn detection(&mut self) -> Result<detect::Settings, ConfigError> {
        let providers = match self.ip_providers.take() {
            Some(list) => parse_providers(&list)?,
            None => detect::default_providers(),
        };
        let families = match self.ip_families.take() {
            Some(v) => parse_families(&v)?,
            None => vec![crate::net::Family::V4],
        };
        let quorum = parse_number("ip_quorum", self.ip_quorum.take(), 2, 1..=16)? as usize;
        // A quorum more operators than there are can never settle: every detection would fail
        // (and `run` retry for ever), so it is refused here, before anything is asked.
        let counts: Vec<(crate::net::Family, Vec<&str>)> = families
            .iter()
            .map(|&family| (family, detect::operators_serving(&providers, family)))
            .collect();
        if counts.iter().any(|(_, operators)| operators.len() < quorum) {
            let counted = counts
                .iter()
                .map(|(family, operators)| match operators.len() {
                    0 => format!("{family}: 0"),
                    n => format!("{family}: {n} ({})", operators.join(", ")),
                })
                .collect::<Vec<_>>()
                .join("; ");
            return Err(ConfigError::QuorumUnreachable { quorum, counted });
        }
        Ok(detect::Settings {
            providers,
            quorum,
            families,
            allow_non_public: parse_bool("allow_non_public_ips", self.allow_non_public_ips.take())?,
            timeout: parse_duration("request_timeout", self.request_timeout.clone(), "10s")?,
        })
    }

    /// The gateway's settings; None when `SENDSMS_GATEWAY_LISTEN` is unset (the gateway is off).
    fn gateway(&mut self) -> Result<Option<gateway::Settings>, ConfigError> {
        let token_file = self.gateway_token_file.is_some();
        let token = secret_or_file(
            "gateway_token",
            self.gateway_token.take(),
            self.gateway_token_file.take(),
        )?;
        if token
            .as_ref()
            .is_some_and(|t| t.expose_secret().chars().count() < MIN_TOKEN_CHARS)
        {
            return Err(blamed(token_file)(invalid(
                "gateway_token",
                format!("shorter than {MIN_TOKEN_CHARS} characters"),
                "a random token such as the output of openssl rand -hex 32",
            )));
        }
        let hold = parse_duration("gateway_hold", self.gateway_hold.take(), "30s")?;
        let max_held = parse_number(
            "gateway_max_held",
            self.gateway_max_held.take(),
            1000,
            1..=100_000,
        )?;
        let Some(listen) = self.gateway_listen.take() else {
            return Ok(None);
        };
        let listen = listen.trim().parse().map_err(|_| {
            invalid(
                "gateway_listen",
                format!("{listen:?} is not a socket address"),
                "ADDRESS:PORT such as 127.0.0.1:9798",
            )
        })?;
        Ok(Some(gateway::Settings {
            listen,
            token,
            limits: gateway::Limits {
                hold,
                max_held: max_held as usize,
            },
        }))
    }

    fn notify(&mut self) -> Result<notify::Settings, ConfigError> {
        let (urls_file, heartbeat_file) = (
            self.notify_urls_file.is_some(),
            self.heartbeat_url_file.is_some(),
        );
        let urls = secret_or_file(
            "notify_urls",
            self.notify_urls.take(),
            self.notify_urls_file.take(),
        )?;
        let heartbeat = secret_or_file(
            "heartbeat_url",
            self.heartbeat_url.take(),
            self.heartbeat_url_file.take(),
        )?;
        let (chosen, not_ready_for) = parse_notify_events(self.notify_events.take())?;
        Ok(notify::Settings {
            targets: urls
                .map(|u| parse_notify_urls(&u).map_err(blamed(urls_file)))
                .transpose()?
                .unwrap_or_default(),
            chosen,
            not_ready_for,
            heartbeat: heartbeat
                .map(|h| parse_heartbeat(&h).map_err(blamed(heartbeat_file)))
                .transpose()?,
            retry: notify::RETRY,
            attempts: 5,
            timeout: Duration::from_secs(10),
        })
    }

    fn validate(mut self) -> Result<Config, ConfigError> {
        let detection = self.detection()?;
        let gateway = self.gateway()?;
        let notify = self.notify()?;
        let username =
            secret_or_file("username", self.username, self.username_file)?.ok_or_else(|| {
                ConfigError::Missing {
                    var: var("username"),
                    hint: "the sendSMS account user name (or SENDSMS_USERNAME_FILE)",
                }
            })?;
        // A conflict names the two variables that were set, files included.
        let key_var = match self.api_key_file {
            Some(_) => "api_key_file",
            None => "api_key",
        };
        let password_var = match self.password_file {
            Some(_) => "password_file",
            None => "password",
        };
        let key = secret_or_file("api_key", self.api_key, self.api_key_file)?;
        let password = secret_or_file("password", self.password, self.password_file)?;
        let api_key = match (key, password) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Conflict {
                    a: var(key_var),
                    b: var(password_var),
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
        let credentials = Credentials {
            username: username.expose_secret().to_owned(),
            api_key,
        };
        let allow_insecure = parse_bool("allow_insecure_api_url", self.allow_insecure_api_url)?;
        let api_url = parse_api_url(self.api_url.as_deref(), allow_insecure)?;
        let bootstrap = sendsms::BootstrapPath {
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
        let verify_timeout = parse_duration("verify_timeout", self.verify_timeout, "120s")?;
        let reverify_interval = parse_duration("reverify_interval", self.reverify_interval, "6h")?;
        let state_file = self
            .state_file
            .map(|path| StateFile::new(path, &credentials, api_url.as_str()));
        Ok(Config {
            flow: flow::Settings {
                api: sendsms::Settings {
                    url: api_url,
                    request_timeout: parse_duration(
                        "request_timeout",
                        self.request_timeout,
                        "10s",
                    )?,
                    bootstrap,
                    extra_roots: parse_extra_roots(self.extra_ca_file)?,
                },
                credentials,
                verify_timeout,
                api_budget: parse_number("api_budget", self.api_budget, 8, 1..=600)?,
                coordination: coord::Settings {
                    mode: parse_coordination(self.coordination)?,
                    lease: parse_duration_at_least(
                        "coordination_lease",
                        self.coordination_lease,
                        "15s",
                        MIN_INTERVAL,
                    )?,
                    record_ttl: reverify_interval,
                    verify_timeout,
                },
            },
            sidecar: sidecar::Settings {
                families: detection.families.clone(),
                poll_interval: parse_duration_at_least(
                    "poll_interval",
                    self.poll_interval,
                    "60s",
                    MIN_INTERVAL,
                )?,
                reverify_interval,
                recheck_min_interval: parse_duration_at_least(
                    "recheck_min_interval",
                    self.recheck_min_interval,
                    "10s",
                    MIN_INTERVAL,
                )?,
                state_file,
            },
            server: server::Settings {
                listen: parse_listen(self.listen)?,
                recheck_allow_remote: parse_bool(
                    "recheck_allow_remote",
                    self.recheck_allow_remote,
                )?,
            },
            detection,
            gateway,
            notify,
            log_format: match self.log_format.as_deref().map(str::trim) {
                None => None,
                Some(v) if v.eq_ignore_ascii_case("json") => Some(LogFormat::Json),
                Some(v) if v.eq_ignore_ascii_case("text") => Some(LogFormat::Text),
                Some(_) => return Err(invalid("log_format", "unknown format", "json or text")),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    const BASE: [(&str, &str); 4] = [
        ("SENDSMS_USERNAME", "alice"),
        ("SENDSMS_API_KEY", "s3cret-key"),
        ("SENDSMS_IP_PROVIDERS", "http://127.0.0.1:1/ip"),
        ("SENDSMS_IP_QUORUM", "1"),
    ];

    #[test]
    fn defaults_apply() {
        let c = env(&BASE).expect("valid config");
        assert_eq!(c.flow.api.url.as_str(), DEFAULT_API_URL);
        assert_eq!(c.flow.verify_timeout, Duration::from_secs(120));
        assert_eq!(c.flow.api.request_timeout, Duration::from_secs(10));
        assert!(c.flow.api.bootstrap.is_direct());
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
        assert_eq!(c.flow.credentials.api_key.expose_secret(), "pw");
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
    fn a_value_read_from_a_file_is_blamed_on_the_file_variable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, content: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).expect("write");
            path.display().to_string()
        };
        let (key, heartbeat) = (file("key", "k3y"), file("heartbeat", "not a url"));
        let e = env(&[
            ("SENDSMS_USERNAME", "a"),
            ("SENDSMS_API_KEY_FILE", &key),
            ("SENDSMS_PASSWORD", "pw"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("SENDSMS_API_KEY_FILE and SENDSMS_PASSWORD are both set"),
            "{e}"
        );
        let mut v = BASE.to_vec();
        v.push(("SENDSMS_HEARTBEAT_URL_FILE", &heartbeat));
        let e = env(&v).unwrap_err().to_string();
        assert!(
            e.starts_with("SENDSMS_HEARTBEAT_URL_FILE is invalid"),
            "{e}"
        );
        let mut v = BASE.to_vec();
        v.push(("SENDSMS_HEARTBEAT_URL", "not a url"));
        let e = env(&v).unwrap_err().to_string();
        assert!(e.starts_with("SENDSMS_HEARTBEAT_URL is invalid"), "{e}");
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
    fn an_api_url_with_credentials_or_a_query_is_refused_without_showing_them() {
        for url in [
            "https://user:urlpass@api.sendsms.ro/json",
            "https://user@api.sendsms.ro/json",
            "https://api.sendsms.ro/json?password=urlpass",
            "http://127.0.0.1:8089/json?debug=1",
        ] {
            let mut v = BASE.to_vec();
            v.push(("SENDSMS_API_URL", url));
            let e = env(&v).expect_err(url).to_string();
            assert!(
                e.starts_with("SENDSMS_API_URL is invalid (it carries credentials or a query"),
                "{url}: {e}"
            );
            assert!(!e.contains("urlpass") && !e.contains("user"), "{url}: {e}");
        }
        let mut v = BASE.to_vec();
        for url in ["http://localhost/json", "http://[::1]:8089/json"] {
            v.push(("SENDSMS_API_URL", url));
            assert!(env(&v).is_ok(), "{url}");
            v.pop();
        }
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
    fn the_gateway_is_off_unless_it_has_an_address() {
        assert!(env(&BASE).expect("valid").gateway.is_none());
        let mut v = BASE.to_vec();
        v.push(("SENDSMS_GATEWAY_LISTEN", "127.0.0.1:9798"));
        let gateway = env(&v).expect("valid").gateway.expect("on");
        assert_eq!(gateway.listen.port(), 9798);
        assert_eq!(gateway.limits.hold, Duration::from_secs(30));
        assert_eq!(gateway.limits.max_held, 1000);
        assert!(gateway.token.is_none());
        v.push(("SENDSMS_GATEWAY_TOKEN", "short-tok3n"));
        let e = env(&v).unwrap_err().to_string();
        assert!(
            e.contains("SENDSMS_GATEWAY_TOKEN") && !e.contains("short-tok3n"),
            "{e}"
        );
        v.pop();
        v.push(("SENDSMS_GATEWAY_TOKEN", "0123456789abcdef0123"));
        v.push(("SENDSMS_GATEWAY_HOLD", "5s"));
        let c = env(&v).expect("valid");
        let gateway = c.gateway.expect("on");
        assert_eq!(gateway.limits.hold, Duration::from_secs(5));
        assert!(!format!("{gateway:?}").contains("0123456789abcdef0123"));
        v.push(("SENDSMS_GATEWAY_LISTEN", "localhost"));
        let e = env(&v).unwrap_err().to_string();
        assert!(e.contains("SENDSMS_GATEWAY_LISTEN"), "{e}");
    }

    #[test]
    fn coordination_modes_and_their_errors() {
        let with = |value: &str| {
            let mut v = BASE.to_vec();
            v.push(("SENDSMS_COORDINATION", value));
            env(&v)
        };
        let mode = |c: Config| c.flow.coordination.mode;
        assert!(matches!(
            mode(env(&BASE).expect("valid")),
            coord::Mode::None
        ));
        assert!(matches!(
            mode(with("none").expect("valid")),
            coord::Mode::None
        ));
        assert!(matches!(
            mode(with("file:/var/lib/fleet").expect("valid")),
            coord::Mode::File(dir) if dir == std::path::Path::new("/var/lib/fleet")
        ));
        let redis = with("rediss://:hunter2pw@cache.internal:6380/3").expect("valid");
        let shown = format!("{:?}", redis.flow.coordination.mode);
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

    #[test]
    fn hazardous_values_are_refused() {
        for (var, value) in [
            ("SENDSMS_COORDINATION_LEASE", "1ns"),
            ("SENDSMS_POLL_INTERVAL", "1ms"),
            ("SENDSMS_RECHECK_MIN_INTERVAL", "999ms"),
        ] {
            let mut v = BASE.to_vec();
            v.push((var, value));
            let e = env(&v).unwrap_err().to_string();
            assert!(e.contains(var) && e.contains("at least 1s"), "{e}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("big");
        std::fs::write(&big, vec![b'k'; 64 * 1024 + 1]).expect("big file");
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        let mut files = vec![("/dev/zero".to_owned(), "not a regular file")];
        files.push((big.display().to_string(), "larger than 65536 bytes"));
        if made.is_ok_and(|s| s.success()) {
            files.push((fifo.display().to_string(), "not a regular file"));
        }
        for (path, says) in files {
            let e = env(&[("SENDSMS_USERNAME", "a"), ("SENDSMS_API_KEY_FILE", &path)])
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("SENDSMS_API_KEY_FILE") && e.contains(says),
                "{path}: {e}"
            );
        }
    }

    #[test]
    fn a_quorum_the_providers_cannot_meet_is_refused_with_the_operators_counted() {
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut v = BASE.to_vec();
            v.retain(|(k, _)| pairs.iter().all(|(p, _)| p != k));
            v.extend_from_slice(pairs);
            env(&v)
        };
        let two = "http://127.0.0.1:1/ip#a,dns://127.0.0.1:2/whoami.test?type=A#b";
        assert!(with(&[("SENDSMS_IP_PROVIDERS", two), ("SENDSMS_IP_QUORUM", "2")]).is_ok());
        let e = with(&[("SENDSMS_IP_PROVIDERS", two), ("SENDSMS_IP_QUORUM", "3")])
            .expect_err("three of two")
            .to_string();
        for says in ["SENDSMS_IP_QUORUM is 3", "ipv4: 2 (a, b)", "#OPERATOR"] {
            assert!(e.contains(says), "{says}: {e}");
        }
        // Two providers on one domain are one operator unless named apart.
        let one_domain = "https://a.example.net/ip,https://b.example.net/ip";
        let e = with(&[
            ("SENDSMS_IP_PROVIDERS", one_domain),
            ("SENDSMS_IP_QUORUM", "2"),
        ])
        .expect_err("one operator")
        .to_string();
        assert!(e.contains("ipv4: 1 (example.net)"), "{e}");
        let named = "https://a.example.net/ip#a,https://b.example.net/ip#b";
        assert!(with(&[("SENDSMS_IP_PROVIDERS", named), ("SENDSMS_IP_QUORUM", "2")]).is_ok());
        // Each family counts only the providers that can answer for it.
        let e = with(&[
            ("SENDSMS_IP_PROVIDERS", two),
            ("SENDSMS_IP_FAMILIES", "ipv4,ipv6"),
        ])
        .expect_err("no IPv6 provider")
        .to_string();
        assert!(e.contains("ipv4: 2 (a, b); ipv6: 0"), "{e}");
    }

    #[test]
    fn a_bind_address_this_host_does_not_have_is_a_configuration_error() {
        let mut v = BASE.to_vec();
        v.push(("SENDSMS_BOOTSTRAP_BIND", "127.0.0.2"));
        env(&v)
            .expect("valid")
            .check_host()
            .expect("loopback is this host's");
        v.pop();
        // TEST-NET-1: no host has it; binding a socket to it sends nothing anywhere.
        v.push(("SENDSMS_BOOTSTRAP_BIND", "192.0.2.1"));
        let e = env(&v).expect("valid").check_host().expect_err("absent");
        let e = e.to_string();
        assert!(
            e.contains("SENDSMS_BOOTSTRAP_BIND") && e.contains("192.0.2.1"),
            "{e}"
        );
    }

    #[test]
    fn the_variable_list_is_read_from_the_code() {
        let vars = variables();
        assert_eq!(vars.len(), 37, "{vars:?}");
        for name in [
            "SENDSMS_USERNAME",
            "SENDSMS_API_KEY_FILE",
            "SENDSMS_COORDINATION",
            "SENDSMS_COORDINATION_LEASE",
        ] {
            assert!(vars.iter().any(|v| v == name), "{name} missing: {vars:?}");
        }
    }
}
