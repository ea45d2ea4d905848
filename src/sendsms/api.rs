//! The API's wire format: actions, status codes, decoded answers, and what each failure means.

use std::net::IpAddr;

use serde::Deserialize;
use serde_json::Value;

/// API answers are small; a whitelist of thousands of addresses still fits.
pub(crate) const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// The actions this tool calls. Each knows its wire name and its own parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    TokenAddIp { ip: IpAddr },
    TokenListIps,
}

impl Action {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Action::TokenAddIp { .. } => "token_add_ip",
            Action::TokenListIps => "token_list_ips",
        }
    }

    /// The statuses that mean this action succeeded: 0 and 1 only. Anything else, an unknown
    /// positive code included ("account suspended" as 7, say), is not success; "already
    /// listed" for `token_add_ip` is a refusal whose verdict says so.
    pub(crate) fn succeeded(&self, status: ApiStatus) -> bool {
        matches!(status, ApiStatus::Ok | ApiStatus::Queued)
    }

    pub(crate) fn params(&self) -> Vec<(&'static str, String)> {
        match self {
            Action::TokenAddIp { ip } => vec![("ipaddr", ip.to_string())],
            Action::TokenListIps => Vec::new(),
        }
    }
}

/// The `status` field. Unknown codes are kept, not folded into an error, so a new code from
/// the provider shows up in logs as itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ApiStatus {
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
    pub(crate) fn from_code(code: i64) -> Self {
        let code = if code == -8192 { -8191 } else { code };
        STATUS_CODES
            .iter()
            .find(|(known, _)| *known == code)
            .map_or(Self::Other(code), |(_, status)| *status)
    }

    pub(crate) fn code(self) -> i64 {
        match self {
            Self::Other(code) => code,
            known => STATUS_CODES
                .iter()
                .find(|(_, status)| *status == known)
                .map_or(i64::MIN, |(code, _)| *code),
        }
    }

    /// A documented refusal (a negative code); an unknown code is neither this nor success.
    pub(crate) fn is_error(self) -> bool {
        self.code() < 0
    }
}

/// What an answer means for the caller: done, already done, refused for this key or address,
/// slow down, try again, or give up. Every retry decision is made on this alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Verdict {
    Success,
    AlreadyListed,
    AuthRefused,
    RateLimited,
    Transient,
    Permanent,
    /// A status the action never answers, not even on failure: not success, not retried.
    Unexpected,
}

impl Verdict {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Verdict::Success => "success",
            Verdict::AlreadyListed => "already_listed",
            Verdict::AuthRefused => "auth_refused",
            Verdict::RateLimited => "rate_limited",
            Verdict::Transient => "transient",
            Verdict::Permanent => "permanent",
            Verdict::Unexpected => "unexpected_status",
        }
    }

    pub(crate) fn is_retryable(self) -> bool {
        matches!(self, Verdict::RateLimited | Verdict::Transient)
    }
}

/// A decoded answer: `{"status": int, "message": string, "details": ...}`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ApiResponse {
    pub(crate) status: ApiStatus,
    pub(crate) message: String,
    pub(crate) details: Value,
}

#[derive(Deserialize)]
struct WireResponse {
    status: i64,
    #[serde(default)]
    message: Value,
    #[serde(default)]
    details: Value,
}

/// Why a body is not an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unparsed {
    /// Not a JSON object at all, or one without the API's integer `status`: whatever answered
    /// is not the sendSMS API.
    #[error("{0}")]
    Foreign(String),
    /// A JSON object cut short or garbled on the way: the next answer may well be whole.
    #[error("{0}")]
    Damaged(String),
}

/// Decodes a body whatever its content type said (the API labels JSON as text/html).
pub(crate) fn parse_response(body: &[u8]) -> Result<ApiResponse, Unparsed> {
    // A UTF-8 byte-order mark or leading blanks from a misbehaving front end are tolerated.
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if !trimmed.starts_with('{') {
        return Err(Unparsed::Foreign(format!(
            "the answer is not a JSON object ({} bytes)",
            body.len()
        )));
    }
    let wire: WireResponse = serde_json::from_str(trimmed).map_err(|e| {
        let why = format!(
            "the answer is not the API's JSON ({e}; {} bytes)",
            body.len()
        );
        // Well-formed JSON of another shape comes from something else; broken JSON was
        // damaged on its way.
        match e.classify() {
            serde_json::error::Category::Data => Unparsed::Foreign(why),
            _ => Unparsed::Damaged(why),
        }
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

/// Only the `status` of an answer, read without building the rest: the gateway's hot path.
pub(crate) fn status_of(body: &[u8]) -> Option<ApiStatus> {
    #[derive(Deserialize)]
    struct StatusOnly {
        status: i64,
    }
    let text = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
    serde_json::from_slice::<StatusOnly>(text.trim_ascii())
        .ok()
        .map(|s| ApiStatus::from_code(s.status))
}

/// A failed call. The text never holds the URL with its query (and so never the key).
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// `message` is the API's own, quoted as it came (without the key, should it echo it).
    #[error("the API answered status {code}: \"{message}\"", code = status.code())]
    Refused { status: ApiStatus, message: String },
    #[error("the API answered HTTP {0}")]
    Http(u16),
    #[error("the API could not be reached: {0}")]
    Transport(String),
    /// No connection could be opened: refused, no route, or a host name that does not resolve
    /// (with a proxy, the proxy's).
    #[error("no connection: {0}")]
    Unreachable(String),
    #[error("the API's answer was unusable: {0}")]
    Malformed(String),
    /// Something answered, but not as the sendSMS API does: HTTP 404, a redirect, or a body
    /// that is not its JSON. It names `SENDSMS_API_URL`, which has no query, and what came.
    #[error(
        "{0}. Check SENDSMS_API_URL: it must be the API's JSON endpoint, such as \
         https://api.sendsms.ro/json"
    )]
    NotTheApi(String),
    /// A status that is neither a documented refusal nor success for this action.
    #[error(
        "the API answered status {code} ({message}), which is not a success code (0 or 1); nothing is assumed done"
    )]
    UnexpectedStatus { code: i64, message: String },
    /// The call was never sent: no budget before the operation's deadline.
    #[error("the call was not made: {0}")]
    NotSent(String),
}

impl ApiError {
    /// What this failure means; `-512` (duplicate record) is "already listed" for `token_add_ip`.
    pub(crate) fn verdict(&self) -> Verdict {
        match self {
            ApiError::Refused {
                status: ApiStatus::DuplicateRecord,
                ..
            } => Verdict::AlreadyListed,
            ApiError::Refused { status, .. } => match status {
                ApiStatus::AuthenticationFailed => Verdict::AuthRefused,
                ApiStatus::TooManyRequests | ApiStatus::Timeout => Verdict::RateLimited,
                ApiStatus::InternalError => Verdict::Transient,
                _ => Verdict::Permanent,
            },
            ApiError::Http(429) => Verdict::RateLimited,
            ApiError::Http(code) if *code >= 500 => Verdict::Transient,
            ApiError::Http(_) | ApiError::NotTheApi(_) => Verdict::Permanent,
            ApiError::Transport(_) | ApiError::Unreachable(_) | ApiError::Malformed(_) => {
                Verdict::Transient
            }
            ApiError::UnexpectedStatus { .. } => Verdict::Unexpected,
            // Waiting longer is what the budget asks for; the deadline decides whether there is time.
            ApiError::NotSent(_) => Verdict::RateLimited,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(refused(-512).verdict(), Verdict::AlreadyListed);
        assert_eq!(refused(-8).verdict(), Verdict::AuthRefused);
        assert_eq!(refused(-4096).verdict(), Verdict::RateLimited);
        assert_eq!(refused(-8192).verdict(), Verdict::RateLimited);
        assert_eq!(refused(-16).verdict(), Verdict::Transient);
        assert_eq!(refused(-128).verdict(), Verdict::Permanent);
        assert_eq!(refused(-77).verdict(), Verdict::Permanent);
        assert_eq!(ApiError::Http(429).verdict(), Verdict::RateLimited);
        assert_eq!(ApiError::Http(502).verdict(), Verdict::Transient);
        assert_eq!(ApiError::Http(500).verdict(), Verdict::Transient);
        assert_eq!(ApiError::Http(499).verdict(), Verdict::Permanent);
        assert_eq!(ApiError::Http(404).verdict(), Verdict::Permanent);
        assert_eq!(
            ApiError::Unreachable("x".into()).verdict(),
            Verdict::Transient
        );
        assert_eq!(
            ApiError::Malformed("x".into()).verdict(),
            Verdict::Transient
        );
        assert_eq!(
            ApiError::NotTheApi("x".into()).verdict(),
            Verdict::Permanent
        );
        assert_eq!(
            ApiError::Transport("x".into()).verdict(),
            Verdict::Transient
        );
        let unexpected = ApiError::UnexpectedStatus {
            code: 7,
            message: "account suspended".into(),
        };
        assert_eq!(unexpected.verdict(), Verdict::Unexpected);
        // The budget refused the call before the deadline: waiting is what it asks for.
        assert_eq!(
            ApiError::NotSent("no budget".into()).verdict(),
            Verdict::RateLimited
        );
    }

    #[test]
    fn only_rate_limits_and_transient_faults_are_retried_and_each_verdict_has_its_label() {
        let all = [
            (Verdict::Success, "success", false),
            (Verdict::AlreadyListed, "already_listed", false),
            (Verdict::AuthRefused, "auth_refused", false),
            (Verdict::RateLimited, "rate_limited", true),
            (Verdict::Transient, "transient", true),
            (Verdict::Permanent, "permanent", false),
            (Verdict::Unexpected, "unexpected_status", false),
        ];
        for (verdict, label, retried) in all {
            assert_eq!((verdict.label(), verdict.is_retryable()), (label, retried));
        }
    }

    #[test]
    fn only_0_and_1_are_success_for_either_action() {
        for action in [
            Action::TokenListIps,
            Action::TokenAddIp {
                ip: "203.0.113.7".parse().expect("ip"),
            },
        ] {
            for code in [-8192, -512, -8, -1, 2, 3, 7, 100] {
                assert!(!action.succeeded(ApiStatus::from_code(code)), "{code}");
            }
            assert!(action.succeeded(ApiStatus::Ok) && action.succeeded(ApiStatus::Queued));
        }
    }

    #[test]
    fn actions_say_their_wire_name_and_parameters() {
        let ip: IpAddr = "203.0.113.7".parse().expect("ip");
        let add = Action::TokenAddIp { ip };
        assert_eq!(add.name(), "token_add_ip");
        assert_eq!(add.params(), [("ipaddr", "203.0.113.7".to_owned())]);
        assert_eq!(Action::TokenListIps.name(), "token_list_ips");
        assert!(Action::TokenListIps.params().is_empty());
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
        assert_eq!(
            status_of(b"\xef\xbb\xbf {\"details\":[1,{\"a\":2}],\"status\":-8}\n"),
            Some(ApiStatus::AuthenticationFailed)
        );
        assert_eq!(status_of(b"<html>502</html>"), None);
    }

    #[test]
    fn a_body_cut_short_is_damaged_and_one_of_another_shape_is_foreign() {
        let foreign = |body: &[u8]| matches!(parse_response(body), Err(Unparsed::Foreign(_)));
        assert!(foreign(b"<html><body>404 Not Found</body></html>"));
        assert!(foreign(b"203.0.113.7\n"));
        assert!(
            foreign(br#"{"ip":"203.0.113.7"}"#),
            "JSON, but not the API's"
        );
        assert!(foreign(br#"{"status":"ok"}"#));
        let damaged = |body: &[u8]| matches!(parse_response(body), Err(Unparsed::Damaged(_)));
        assert!(damaged(br#"{"status": 0, "message": "OK", "details": ["#));
        assert!(damaged(br#"{"status": 0, "message": "OK" "details"}"#));
    }
}
