//! Parsers for single configuration values; each error names the variable and a right value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{ConfigError, invalid, var};
use crate::coord;
use crate::detect::ProviderSpec;
use crate::http::ExtraRoots;
use crate::net::Family;
use crate::notify::{Heartbeat, Kind, Target};
use crate::secret::SecretUrl;

/// A value given directly or through `NAME_FILE` (Kubernetes and Docker secrets), never both.
pub(super) fn secret_or_file(
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
            let content = read_small_file(&path)
                .map_err(|source| unreadable(&format!("{name}_file"), &path, source))?;
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

/// The most a key or token file may hold: a secret is a line, not a document.
pub(super) const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// A secret file: a regular file (a FIFO would hang the start, `/dev/zero` would never end)
/// of at most 64 KiB. Opened without blocking and checked on the open descriptor, so the
/// file cannot be swapped between the check and the read; symbolic links are followed, as
/// Kubernetes mounts secrets through them.
fn read_small_file(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > MAX_SECRET_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {MAX_SECRET_FILE_BYTES} bytes"),
        ));
    }
    let mut content = String::new();
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_string(&mut content)?;
    if content.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("larger than {MAX_SECRET_FILE_BYTES} bytes"),
        ));
    }
    Ok(content)
}

/// A file that cannot be read. Denied, the message says who the process runs as and who may
/// read the file: in a container the two are often set in different places (the image's USER,
/// the pod's securityContext, the secret's defaultMode), and neither is in the error itself.
fn unreadable(name: &str, path: &Path, source: std::io::Error) -> ConfigError {
    let access = if source.kind() == std::io::ErrorKind::PermissionDenied {
        access(path)
    } else {
        String::new()
    };
    ConfigError::UnreadableFile {
        var: var(name),
        path: path.to_owned(),
        source,
        access,
    }
}

/// "; this process runs as uid 1000 (app), gid 1000; the file is owned by uid 0 (root), gid 0
/// (root), mode 0600", as far as it can be known without privileges.
fn access(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    // The effective ids decide access: the second field of the Uid and Gid lines.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|id| id.parse::<u32>().ok())
    };
    let user = effective("Uid:").map(|uid| named("uid", uid, "/etc/passwd"));
    let group = effective("Gid:").map(|gid| named("gid", gid, "/etc/group"));
    let process = match (user, group) {
        (Some(user), Some(group)) => format!("; this process runs as {user}, {group}"),
        (Some(user), None) => format!("; this process runs as {user}"),
        _ => String::new(),
    };
    let file = match std::fs::metadata(path) {
        Ok(meta) => format!(
            "; the file is owned by {}, {}, mode {:04o}",
            named("uid", meta.uid(), "/etc/passwd"),
            named("gid", meta.gid(), "/etc/group"),
            meta.mode() & 0o7777
        ),
        Err(e) => format!("; the file's owner cannot be read either ({e})"),
    };
    format!("{process}{file}")
}

/// "uid 1000 (app)", with the name when `table` (/etc/passwd or /etc/group) has one.
fn named(kind: &str, id: u32, table: &str) -> String {
    let table = std::fs::read_to_string(table).unwrap_or_default();
    let name = table.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse::<u32>().ok()? == id).then(|| name.to_owned())
    });
    match name {
        Some(name) => format!("{kind} {id} ({name})"),
        None => format!("{kind} {id}"),
    }
}

/// `SENDSMS_EXTRA_CA_FILE`: PEM roots trusted beside the built-in ones.
pub(super) fn parse_extra_roots(path: Option<PathBuf>) -> Result<ExtraRoots, ConfigError> {
    let Some(path) = path else {
        return Ok(ExtraRoots::default());
    };
    let pem = std::fs::read(&path).map_err(|source| unreadable("extra_ca_file", &path, source))?;
    ExtraRoots::from_pem(&pem).map_err(|problem| {
        invalid(
            "extra_ca_file",
            format!("{}: {problem}", path.display()),
            "a PEM file of the CA certificates to trust beside the built-in roots",
        )
    })
}

const COORDINATION_EXPECTED: &str =
    "none, file:/an/absolute/directory, redis://HOST:PORT/DB or rediss://HOST:PORT/DB";

pub(super) fn parse_coordination(value: Option<String>) -> Result<coord::Mode, ConfigError> {
    let Some(text) = value.map(|v| v.trim().to_owned()) else {
        return Ok(coord::Mode::None);
    };
    if text.eq_ignore_ascii_case("none") {
        return Ok(coord::Mode::None);
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
        return Ok(coord::Mode::File(dir));
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
    Ok(coord::Mode::Redis(SecretUrl::new(text)))
}

/// `SENDSMS_LISTEN`, also read alone by `health`, which needs nothing else.
pub(crate) fn parse_listen(value: Option<String>) -> Result<SocketAddr, ConfigError> {
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

pub(super) fn parse_bool(name: &str, value: Option<String>) -> Result<bool, ConfigError> {
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

pub(super) fn parse_duration(
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

/// `parse_duration`, and at least `floor`: below it a loop would spin (a lease of 1 ns renews
/// without pause) or hammer public services (a poll every millisecond).
pub(super) fn parse_duration_at_least(
    name: &str,
    value: Option<String>,
    default: &str,
    floor: Duration,
) -> Result<Duration, ConfigError> {
    let duration = parse_duration(name, value, default)?;
    if duration < floor {
        return Err(invalid(
            name,
            format!("{duration:?} is shorter than {floor:?}"),
            "a duration of at least 1s, such as 15s",
        ));
    }
    Ok(duration)
}

/// The shortest lease, poll interval and recheck interval.
pub(super) const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The longest duration any variable accepts.
pub(super) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 60 * 60);

pub(super) fn parse_number(
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

pub(super) fn parse_api_url(value: Option<&str>, allow_insecure: bool) -> Result<Url, ConfigError> {
    let text = value.unwrap_or(super::DEFAULT_API_URL).trim();
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

pub(crate) fn host_is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

pub(super) fn parse_proxy(value: String) -> Result<SecretUrl, ConfigError> {
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
    Ok(SecretUrl::new(value.trim().to_owned()))
}

pub(super) fn parse_providers(list: &str) -> Result<Vec<ProviderSpec>, ConfigError> {
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

pub(super) fn parse_families(value: &str) -> Result<Vec<Family>, ConfigError> {
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

/// `SENDSMS_NOTIFY_URLS`: the webhooks. The value may hold tokens: problems are described by
/// position, never repeated.
pub(super) fn parse_notify_urls(list: &SecretString) -> Result<Vec<Target>, ConfigError> {
    let targets: Vec<Target> = list
        .expose_secret()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, text)| {
            Target::parse(text).map_err(|why| {
                invalid(
                    "notify_urls",
                    format!("entry {}: {why}", i + 1),
                    Target::EXPECTED,
                )
            })
        })
        .collect::<Result<_, _>>()?;
    if targets.is_empty() {
        return Err(invalid(
            "notify_urls",
            "the list is empty",
            Target::EXPECTED,
        ));
    }
    Ok(targets)
}

/// `SENDSMS_HEARTBEAT_URL`: the monitor pinged after each round (a secret, never repeated).
pub(super) fn parse_heartbeat(url: &SecretString) -> Result<Heartbeat, ConfigError> {
    Heartbeat::parse(url.expose_secret()).map_err(|why| {
        invalid(
            "heartbeat_url",
            why,
            "a Healthchecks.io-style ping URL or an Uptime Kuma push URL (http or https)",
        )
    })
}

const EVENTS_EXPECTED: &str = "a comma-separated list of ip_changed, whitelisted, \
     verification_failed, not_ready_for[=DURATION] (default 5m) and recovered";

/// `SENDSMS_NOTIFY_EVENTS`: the events that go out (all by default) and how long not ready
/// is worth a `not_ready_for`.
pub(super) fn parse_notify_events(
    value: Option<String>,
) -> Result<(Vec<Kind>, Duration), ConfigError> {
    let default_wait = Duration::from_secs(5 * 60);
    let Some(text) = value else {
        return Ok((Kind::CHOOSABLE.to_vec(), default_wait));
    };
    let mut chosen = Vec::new();
    let mut wait = default_wait;
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, duration) = match item.split_once('=') {
            Some((name, d)) => (name.trim(), Some(d.trim())),
            None => (item, None),
        };
        let kind = Kind::CHOOSABLE
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                invalid(
                    "notify_events",
                    format!("unknown event {name:?}"),
                    EVENTS_EXPECTED,
                )
            })?;
        match (kind, duration) {
            (Kind::NotReadyFor, Some(d)) => {
                wait = parse_duration("notify_events", Some(d.to_owned()), "5m")?;
            }
            (_, Some(_)) => {
                return Err(invalid(
                    "notify_events",
                    format!("{name} takes no value"),
                    EVENTS_EXPECTED,
                ));
            }
            _ => {}
        }
        if !chosen.contains(&kind) {
            chosen.push(kind);
        }
    }
    if chosen.is_empty() {
        return Err(invalid(
            "notify_events",
            "the list is empty",
            EVENTS_EXPECTED,
        ));
    }
    Ok((chosen, wait))
}
