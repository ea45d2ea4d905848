//! What the app asked for: who may call, which actions are forwarded, and the call without the app's credentials.

use std::net::IpAddr;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// How an action may be treated when its outcome is unknown, and whether the API budget applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A read-only, unbilled query: counted against the API budget, and asked again when its
    /// outcome is unknown.
    Query,
    /// Anything else: it sends, bills or changes state, so it is never sent twice.
    Billed,
}

/// An action as the gateway treats it; `label` is its name in metrics (a bounded set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Action {
    pub(crate) label: &'static str,
    pub(crate) kind: Kind,
}

/// Read-only and unbilled: the only actions asked again after an unknown outcome. A short,
/// explicit list: a pattern such as `*_check*` would take in `otp_check`, which uses up a code.
const QUERIES: &[&str] = &[
    "message_status",
    "messages_get",
    "messages_statistics",
    "user_get_balance",
    "user_get_info",
    "user_get_phone_number",
    "get_user_pricing_list",
    "route_check_price",
    "ping",
    "batch_check_status",
    "batches_list",
    "blocklist_check",
    "token_list_ips",
];

/// Other actions the public clients use, named in metrics as themselves; any other name is
/// forwarded as billed and counted as `other`.
const BILLED: &[&str] = &[
    "message_send",
    "message_send_gdpr",
    "batch_create",
    "batch_start",
    "batch_stop",
    "blocklist_add",
    "blocklist_del",
    "hlr_perform",
    "hlr_perform_synchronous",
    "mnp_perform",
    "otp_send",
    "otp_check",
    "address_book_contact_add",
    "user_transfer_funds",
];

/// Actions the gateway refuses, and why: they manage the key itself, and an app that sends
/// through the gateway has no business with the key.
const REFUSED: &[(&str, &str)] = &[
    (
        "token_add_ip",
        "only the sidecar whitelists addresses, through its bootstrap path",
    ),
    ("user_get_api_key", "it answers with an API key"),
    (
        "user_authorize_application",
        "it hands out access to the account",
    ),
    (
        "user_allow_token_request",
        "it hands out access to the account",
    ),
    (
        "execute_multiple",
        "it can carry any action, the refused ones included",
    ),
];

/// An action the gateway does not forward: its metric label, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Unforwarded {
    pub(crate) label: &'static str,
    pub(crate) why: &'static str,
}

/// The action named `name`, or why the gateway does not forward it.
pub(crate) fn action(name: &str) -> Result<Action, Unforwarded> {
    if let Some((label, why)) = REFUSED.iter().find(|(refused, _)| *refused == name) {
        return Err(Unforwarded { label, why });
    }
    if name.starts_with("token_") && name != "token_list_ips" {
        return Err(Unforwarded {
            label: "other",
            why: "token actions manage the key; only the sidecar calls them",
        });
    }
    if let Some(label) = QUERIES.iter().find(|q| **q == name) {
        return Ok(Action {
            label,
            kind: Kind::Query,
        });
    }
    let label = BILLED.iter().find(|b| **b == name).copied();
    Ok(Action {
        label: label.unwrap_or(if name.is_empty() { "none" } else { "other" }),
        kind: Kind::Billed,
    })
}

/// Every label `action` can give, for documentation and tests.
#[cfg(test)]
pub(crate) fn labels() -> impl Iterator<Item = &'static str> {
    QUERIES
        .iter()
        .chain(BILLED)
        .copied()
        .chain(["other", "none"])
}

/// Why a caller is turned away (HTTP 403, a sendSMS-shaped `-8`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "the gateway answers callers on loopback only unless SENDSMS_GATEWAY_TOKEN is set; this caller is not on loopback"
    )]
    NotLoopback,
    #[error(
        "the gateway token is missing or wrong: send it as the password parameter or as Authorization: Bearer"
    )]
    BadToken,
    #[error("action {name} is not forwarded: {why}")]
    Action { name: String, why: &'static str },
}

/// The token a caller presented, if any: `Authorization: Bearer`, else its `password`.
pub(crate) fn presented<'a>(
    authorization: Option<&'a str>,
    password: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    });
    bearer.or(password)
}

/// With a token, every caller must present it; without one, only loopback callers are
/// answered, so a gateway listening on 0.0.0.0 is never an open relay.
pub(crate) fn authorize(
    peer: IpAddr,
    token: Option<&SecretString>,
    presented: Option<&str>,
) -> Result<(), Refusal> {
    match token {
        Some(token) => match presented {
            Some(given) if same(given, token.expose_secret()) => Ok(()),
            _ => Err(Refusal::BadToken),
        },
        None if peer.to_canonical().is_loopback() => Ok(()),
        None => Err(Refusal::NotLoopback),
    }
}

/// Compares in time independent of where the two differ, and of their lengths: both sides are
/// hashed first, then every byte of the digests is compared.
fn same(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

/// Parameters the app sends that are never forwarded: the gateway sends its own.
const CREDENTIALS: [&str; 2] = ["username", "password"];

/// One source of the app's parameters (query string or form body), read once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Params {
    /// Everything but its credentials, in order: what is forwarded.
    pub(crate) forwarded: Vec<(String, String)>,
    /// Its `password`: the gateway token, or the app's old credential, never forwarded.
    pub(crate) password: Option<String>,
}

impl Params {
    pub(crate) fn parse(encoded: &[u8]) -> Self {
        let mut params = Params::default();
        for (name, value) in url::form_urlencoded::parse(encoded) {
            if name == "password" {
                params.password.get_or_insert_with(|| value.into_owned());
            } else if !CREDENTIALS.contains(&name.as_ref()) {
                params
                    .forwarded
                    .push((name.into_owned(), value.into_owned()));
            }
        }
        params
    }

    /// The first value of `name` among the forwarded parameters.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.forwarded
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A call as it will be forwarded: the app's parameters where it put them (query string, form
/// body), without its username and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Call {
    pub(crate) action: Action,
    pub(crate) query: Vec<(String, String)>,
    /// Present for a POST: the form body's parameters.
    pub(crate) form: Option<Vec<(String, String)>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn who_may_call() {
        let token = SecretString::from("gw-token-1".to_owned());
        assert_eq!(authorize(ip("127.0.0.1"), None, None), Ok(()));
        assert_eq!(authorize(ip("::1"), None, Some("anything")), Ok(()));
        assert_eq!(authorize(ip("::ffff:127.0.0.9"), None, None), Ok(()));
        assert_eq!(
            authorize(ip("10.0.0.7"), None, Some("gw-token-1")),
            Err(Refusal::NotLoopback)
        );
        assert_eq!(
            authorize(ip("10.0.0.7"), Some(&token), Some("gw-token-1")),
            Ok(())
        );
        for wrong in [None, Some(""), Some("gw-token-2"), Some("gw-token-1 ")] {
            assert_eq!(
                authorize(ip("127.0.0.1"), Some(&token), wrong),
                Err(Refusal::BadToken),
                "{wrong:?}"
            );
        }
    }

    #[test]
    fn a_bearer_token_wins_over_the_password() {
        assert_eq!(presented(Some("Bearer abc"), Some("pw")), Some("abc"));
        assert_eq!(presented(Some("bearer  abc "), None), Some("abc"));
        assert_eq!(presented(Some("Basic YWJj"), Some("pw")), Some("pw"));
        assert_eq!(presented(None, None), None);
    }

    #[test]
    fn actions_by_kind_and_the_refused_ones() {
        assert_eq!(action("message_send").map(|a| a.kind), Ok(Kind::Billed));
        assert_eq!(action("message_status").map(|a| a.kind), Ok(Kind::Query));
        assert_eq!(action("otp_check").map(|a| a.kind), Ok(Kind::Billed));
        assert_eq!(
            action("brand_new_action"),
            Ok(Action {
                label: "other",
                kind: Kind::Billed
            })
        );
        assert_eq!(action("").map(|a| a.label), Ok("none"));
        for refused in [
            "token_add_ip",
            "token_delete_ip",
            "user_get_api_key",
            "execute_multiple",
        ] {
            assert!(action(refused).is_err(), "{refused}");
        }
        assert_eq!(action("token_list_ips").map(|a| a.kind), Ok(Kind::Query));
        assert_eq!(labels().count(), QUERIES.len() + BILLED.len() + 2);
    }

    #[test]
    fn the_apps_credentials_are_dropped() {
        let params = Params::parse(
            b"action=message_send&username=app&to=0722&password=app-secret&text=hi+there&password=2",
        );
        assert_eq!(
            params.forwarded,
            [
                ("action", "message_send"),
                ("to", "0722"),
                ("text", "hi there")
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(params.password.as_deref(), Some("app-secret"));
        assert_eq!(params.get("action"), Some("message_send"));
        assert_eq!(
            Params::parse(b"password=p%26w").password.as_deref(),
            Some("p&w")
        );
    }
}
