//! sendSMS JSON API client: typed actions, status codes, one failure classification, defensive parsing.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use crate::config::{BootstrapPath, Credentials};
use crate::detect::Family;
use crate::http;

/// API answers are small; a whitelist of thousands of addresses still fits.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The actions this tool calls. Each knows its wire name and its own parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    TokenAddIp { ip: IpAddr },
    TokenListIps,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::TokenAddIp { .. } => "token_add_ip",
            Action::TokenListIps => "token_list_ips",
        }
    }

    fn params(&self) -> Vec<(&'static str, String)> {
        match self {
            Action::TokenAddIp { ip } => vec![("ipaddr", ip.to_string())],
            Action::TokenListIps => Vec::new(),
        }
    }
}

/// The `status` field. Unknown codes are kept, not folded into an error, so a new code from
/// the provider shows up in logs as itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiStatus {
    Ok,
    Queued,
    RequestKeyCreated,
    NoAction,
    NoSuchAction,
    MissingParameter,
    AuthenticationFailed,
    InternalError,
    RoutingError,
    OutOfCredit,
    InvalidRecord,
    CouldNotSave,
    DuplicateRecord,
    TooManyRequests,
    Timeout,
    Other(i64),
}

/// The documented codes, in one place for both directions. -8192 is another source's
/// spelling of -8191, so it only appears on the way in.
const STATUS_CODES: &[(i64, ApiStatus)] = &[
    (0, ApiStatus::Ok),
    (1, ApiStatus::Queued),
    (2, ApiStatus::RequestKeyCreated),
    (-1, ApiStatus::NoAction),
    (-2, ApiStatus::NoSuchAction),
    (-4, ApiStatus::MissingParameter),
    (-8, ApiStatus::AuthenticationFailed),
    (-16, ApiStatus::InternalError),
    (-32, ApiStatus::RoutingError),
    (-64, ApiStatus::OutOfCredit),
    (-128, ApiStatus::InvalidRecord),
    (-256, ApiStatus::CouldNotSave),
    (-512, ApiStatus::DuplicateRecord),
    (-4096, ApiStatus::TooManyRequests),
    (-8191, ApiStatus::Timeout),
];

impl ApiStatus {
    pub fn from_code(code: i64) -> Self {
        let code = if code == -8192 { -8191 } else { code };
        STATUS_CODES
            .iter()
            .find(|(known, _)| *known == code)
            .map_or(Self::Other(code), |(_, status)| *status)
    }

    pub fn code(self) -> i64 {
        match self {
            Self::Other(code) => code,
            known => STATUS_CODES
                .iter()
                .find(|(_, status)| *status == known)
                .map_or(i64::MIN, |(code, _)| *code),
        }
    }

    pub fn is_error(self) -> bool {
        self.code() < 0
    }
}

/// How every caller reacts to an answer; the reconciler decides on this alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Success,
    AlreadyListed,
    AuthRefused,
    RateLimited,
    Transient,
    Permanent,
}

impl Class {
    pub fn label(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::AlreadyListed => "already_listed",
            Class::AuthRefused => "auth_refused",
            Class::RateLimited => "rate_limited",
            Class::Transient => "transient",
            Class::Permanent => "permanent",
        }
    }

    pub fn is_retryable(self) -> bool {
        matches!(self, Class::RateLimited | Class::Transient)
    }
}

/// A decoded answer: `{"status": int, "message": string, "details": ...}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiResponse {
    pub status: ApiStatus,
    pub message: String,
    pub details: Value,
}

#[derive(Deserialize)]
struct WireResponse {
    status: i64,
    #[serde(default)]
    message: Value,
    #[serde(default)]
    details: Value,
}

/// Decodes a body whatever its content type said (the API labels JSON as text/html).
pub fn parse_response(body: &[u8]) -> Result<ApiResponse, String> {
    // A UTF-8 byte-order mark or leading blanks from a misbehaving front end are tolerated.
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if !trimmed.starts_with('{') {
        return Err(format!(
            "the answer is not a JSON object ({} bytes)",
            body.len()
        ));
    }
    let wire: WireResponse = serde_json::from_str(trimmed).map_err(|e| {
        format!(
            "the answer is not the API's JSON ({e}; {} bytes)",
            body.len()
        )
    })?;
    let message = match wire.message {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    };
    Ok(ApiResponse {
        status: ApiStatus::from_code(wire.status),
        message,
        details: wire.details,
    })
}

/// A failed call. The text never holds the URL (and so never the key).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the API answered status {code} ({message})", code = status.code())]
    Refused { status: ApiStatus, message: String },
    #[error("the API answered HTTP {0}")]
    Http(u16),
    #[error("the API could not be reached: {0}")]
    Transport(String),
    #[error("the API's answer was unusable: {0}")]
    Malformed(String),
}

impl ApiError {
    /// `duplicate` is the status this provider uses for "already listed" on `token_add_ip`.
    pub fn class(&self, duplicate: ApiStatus) -> Class {
        match self {
            ApiError::Refused { status, .. } if *status == duplicate => Class::AlreadyListed,
            ApiError::Refused { status, .. } => match status {
                ApiStatus::AuthenticationFailed => Class::AuthRefused,
                ApiStatus::TooManyRequests | ApiStatus::Timeout => Class::RateLimited,
                ApiStatus::InternalError => Class::Transient,
                _ => Class::Permanent,
            },
            ApiError::Http(429) => Class::RateLimited,
            ApiError::Http(code) if *code >= 500 => Class::Transient,
            ApiError::Http(_) => Class::Permanent,
            ApiError::Transport(_) | ApiError::Malformed(_) => Class::Transient,
        }
    }
}

/// One entry of a whitelist as the API reported it; unknown shapes are kept as text.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum WhitelistEntry {
    Address(IpAddr),
    Network { network: IpAddr, prefix: u8 },
}

impl WhitelistEntry {
    fn parse(token: &str) -> Option<Self> {
        let token = token
            .trim()
            .trim_matches(|c| c == '"' || c == '\'' || c == '[' || c == ']');
        if let Ok(ip) = token.parse::<IpAddr>() {
            return Some(Self::Address(ip.to_canonical()));
        }
        let (addr, prefix) = token.split_once('/')?;
        let network = addr.parse::<IpAddr>().ok()?.to_canonical();
        let prefix: u8 = prefix.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then_some(Self::Network { network, prefix })
    }

    pub fn covers(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match *self {
            Self::Address(listed) => listed == ip,
            Self::Network { network, prefix } => match (network, ip) {
                (IpAddr::V4(n), IpAddr::V4(a)) => {
                    let mask = u32::MAX
                        .checked_shl(32u32.saturating_sub(u32::from(prefix)))
                        .unwrap_or(0);
                    u32::from(n) & mask == u32::from(a) & mask
                }
                (IpAddr::V6(n), IpAddr::V6(a)) => {
                    let mask = u128::MAX
                        .checked_shl(128u32.saturating_sub(u32::from(prefix)))
                        .unwrap_or(0);
                    u128::from(n) & mask == u128::from(a) & mask
                }
                _ => false,
            },
        }
    }
}

impl fmt::Display for WhitelistEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Address(ip) => write!(f, "{ip}"),
            Self::Network { network, prefix } => write!(f, "{network}/{prefix}"),
        }
    }
}

/// The key's whitelist as `token_list_ips` reported it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct Whitelist(pub Vec<WhitelistEntry>);

impl Whitelist {
    /// The shape of `details` is not published: an array of strings, an array of objects, an
    /// object keyed or valued by address, or one separated string. Every string anywhere in it
    /// (keys included) is split on separators and each piece that is an address or a network
    /// counts, so any of those shapes yields the same list.
    pub fn from_details(details: &Value) -> Self {
        fn walk(value: &Value, depth: usize, out: &mut Vec<WhitelistEntry>) {
            // Nesting deeper than any plausible answer is ignored rather than recursed into.
            if depth > 8 {
                return;
            }
            match value {
                Value::String(s) => tokens(s, out),
                Value::Array(items) => items.iter().for_each(|v| walk(v, depth + 1, out)),
                Value::Object(map) => map.iter().for_each(|(k, v)| {
                    tokens(k, out);
                    walk(v, depth + 1, out);
                }),
                _ => {}
            }
        }
        fn tokens(text: &str, out: &mut Vec<WhitelistEntry>) {
            for piece in text.split(|c: char| c == ',' || c == ';' || c == '|' || c.is_whitespace())
            {
                if let Some(entry) = WhitelistEntry::parse(piece)
                    && !out.contains(&entry)
                {
                    out.push(entry);
                }
            }
        }
        let mut entries = Vec::new();
        walk(details, 0, &mut entries);
        Whitelist(entries)
    }

    pub fn covers(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|entry| entry.covers(ip))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Whitelist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(empty)");
        }
        for (i, entry) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{entry}")?;
        }
        Ok(())
    }
}

/// Called before every API request; the process-wide call budget plugs in here.
pub trait CallObserver: Send + Sync {
    fn before_call(
        &self,
        _action: &'static str,
    ) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
    fn after_call(&self, _action: &'static str, _class: Class) {}
}

/// A client bound to one route: the direct path or the bootstrap path.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    endpoint: Url,
    credentials: Credentials,
    duplicate: ApiStatus,
    route: String,
    observer: Option<Arc<dyn CallObserver>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("the HTTP client for {route} cannot be built: {reason}")]
    Build { route: String, reason: String },
}

impl Client {
    /// The locked key from this host, exactly as the SMS-sending app will use it, over `family`.
    pub fn direct(
        endpoint: Url,
        credentials: Credentials,
        timeout: Duration,
        family: Family,
    ) -> Result<Self, ClientBuildError> {
        let mut client = Self::build(
            endpoint,
            credentials,
            timeout,
            &BootstrapPath::default(),
            Some(family),
        )?;
        client.route = format!("the direct route over {family}");
        Ok(client)
    }

    /// The already-authorized route for writes.
    pub fn bootstrap(
        endpoint: Url,
        credentials: Credentials,
        timeout: Duration,
        path: &BootstrapPath,
    ) -> Result<Self, ClientBuildError> {
        Self::build(endpoint, credentials, timeout, path, None)
    }

    fn build(
        endpoint: Url,
        credentials: Credentials,
        timeout: Duration,
        path: &BootstrapPath,
        family: Option<Family>,
    ) -> Result<Self, ClientBuildError> {
        let route = path.to_string();
        let fail = |reason: String| ClientBuildError::Build {
            route: route.clone(),
            reason,
        };
        let mut builder =
            http::client_builder(timeout, path.bind.or(family.map(Family::unspecified)));
        if let Some(proxy) = &path.proxy {
            // Proxy::all tunnels https with CONNECT, so the proxy sees only the host name.
            let proxy = reqwest::Proxy::all(proxy.expose())
                .map_err(|_| fail(format!("{proxy} is not a usable proxy")))?;
            builder = builder.proxy(proxy);
        }
        let http = builder.build().map_err(|e| fail(http::describe(e)))?;
        Ok(Client {
            http,
            endpoint,
            credentials,
            duplicate: ApiStatus::DuplicateRecord,
            route,
            observer: None,
        })
    }

    pub fn with_observer(mut self, observer: Arc<dyn CallObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    pub fn class_of(&self, error: &ApiError) -> Class {
        error.class(self.duplicate)
    }

    /// One request. A negative status becomes `ApiError::Refused`; the caller classifies.
    pub async fn call(&self, action: &Action) -> Result<ApiResponse, ApiError> {
        if let Some(observer) = &self.observer {
            observer.before_call(action.name()).await;
        }
        let result = self.send(action).await;
        if let Some(observer) = &self.observer {
            let class = match &result {
                Ok(_) => Class::Success,
                Err(e) => self.class_of(e),
            };
            observer.after_call(action.name(), class);
        }
        result
    }

    async fn send(&self, action: &Action) -> Result<ApiResponse, ApiError> {
        let mut url = self.endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("action", action.name());
            query.append_pair("username", &self.credentials.username);
            query.append_pair("password", self.credentials.api_key.expose_secret());
            for (name, value) in action.params() {
                query.append_pair(name, &value);
            }
        }
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| ApiError::Transport(http::describe(e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(ApiError::Http(status.as_u16()));
        }
        let body = http::read_capped(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                http::BodyError::TooLarge { .. } => ApiError::Malformed(e.to_string()),
                http::BodyError::Transport(t) => ApiError::Transport(t),
            })?;
        let answer = parse_response(&body).map_err(ApiError::Malformed)?;
        if answer.status.is_error() {
            return Err(ApiError::Refused {
                status: answer.status,
                message: answer.message.chars().take(200).collect(),
            });
        }
        Ok(answer)
    }

    pub async fn list_ips(&self) -> Result<Whitelist, ApiError> {
        let answer = self.call(&Action::TokenListIps).await?;
        Ok(Whitelist::from_details(&answer.details))
    }

    /// Adds `ip`; "already listed" is success, as the caller wanted the IP listed.
    pub async fn add_ip(&self, ip: IpAddr) -> Result<AddOutcome, ApiError> {
        match self.call(&Action::TokenAddIp { ip }).await {
            Ok(_) => Ok(AddOutcome::Added),
            Err(e) if e.class(self.duplicate) == Class::AlreadyListed => {
                Ok(AddOutcome::AlreadyListed)
            }
            Err(e) => Err(e),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    Added,
    AlreadyListed,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_codes_round_trip_and_keep_unknowns() {
        for code in [
            0, 1, 2, -1, -2, -4, -8, -16, -32, -64, -128, -256, -512, -4096, -8191, -1024, -77,
        ] {
            assert_eq!(ApiStatus::from_code(code).code(), code);
        }
        assert_eq!(ApiStatus::from_code(-8192), ApiStatus::Timeout);
        assert_eq!(ApiStatus::from_code(-77), ApiStatus::Other(-77));
    }

    #[test]
    fn classification() {
        let refused = |code| ApiError::Refused {
            status: ApiStatus::from_code(code),
            message: String::new(),
        };
        let dup = ApiStatus::DuplicateRecord;
        assert_eq!(refused(-512).class(dup), Class::AlreadyListed);
        assert_eq!(refused(-8).class(dup), Class::AuthRefused);
        assert_eq!(refused(-4096).class(dup), Class::RateLimited);
        assert_eq!(refused(-8192).class(dup), Class::RateLimited);
        assert_eq!(refused(-16).class(dup), Class::Transient);
        assert_eq!(refused(-128).class(dup), Class::Permanent);
        assert_eq!(refused(-77).class(dup), Class::Permanent);
        assert_eq!(ApiError::Http(429).class(dup), Class::RateLimited);
        assert_eq!(ApiError::Http(502).class(dup), Class::Transient);
        assert_eq!(ApiError::Http(404).class(dup), Class::Permanent);
        assert_eq!(ApiError::Transport("x".into()).class(dup), Class::Transient);
    }

    #[test]
    fn body_decoded_whatever_the_shape() {
        let r =
            parse_response(b"\xef\xbb\xbf {\"status\":-8,\"message\":\"Auth\",\"details\":null}\n")
                .expect("json");
        assert_eq!(r.status, ApiStatus::AuthenticationFailed);
        assert!(parse_response(b"<html>502</html>").is_err());
        let r = parse_response(br#"{"status":0}"#).expect("json without message");
        assert_eq!(r.message, "");
    }

    #[test]
    fn whitelist_accepts_every_details_shape() {
        let want = [
            WhitelistEntry::Address("203.0.113.7".parse().unwrap()),
            WhitelistEntry::Address("2001:db8::1".parse().unwrap()),
        ];
        for details in [
            json!(["203.0.113.7", "2001:db8::1"]),
            json!([{"ip": "203.0.113.7", "id": 1}, {"ipaddr": "2001:db8::1"}]),
            json!({"203.0.113.7": "added 2026-01-01", "2001:db8::1": true}),
            json!({"ips": ["203.0.113.7", "2001:db8::1"]}),
            json!("203.0.113.7, 2001:db8::1"),
            json!("203.0.113.7\n2001:db8::1"),
        ] {
            // Object keys come back sorted, so compare as sets.
            let got = Whitelist::from_details(&details).0;
            assert!(
                got.len() == want.len() && want.iter().all(|w| got.contains(w)),
                "{details}: {got:?}"
            );
        }
        assert!(Whitelist::from_details(&json!(null)).is_empty());
        assert!(Whitelist::from_details(&json!("none yet")).is_empty());
    }

    #[test]
    fn networks_cover_their_members() {
        let list = Whitelist::from_details(&json!(["198.51.100.0/24", "::ffff:192.0.2.1"]));
        assert!(list.covers("198.51.100.77".parse().unwrap()));
        assert!(!list.covers("198.51.101.1".parse().unwrap()));
        assert!(
            list.covers("192.0.2.1".parse().unwrap()),
            "mapped addresses compare canonically"
        );
    }
}
