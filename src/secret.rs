//! Secret values: the account credentials and URLs that may carry a password, never shown whole; text from outside, redacted and made printable.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use url::Url;

/// The account user name and the IP-locked API key; the key never shows in `Debug`.
#[derive(Clone)]
pub(crate) struct Credentials {
    pub(crate) username: String,
    pub(crate) api_key: SecretString,
}

impl Credentials {
    /// A one-way, stable name for this account and key (64 bits of SHA-256 over a domain tag,
    /// the user name and the key), so stores and files can be scoped per key without holding it.
    pub(crate) fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(b"sendsms-whitelister/key-fingerprint/v1\0");
        hash.update(self.username.as_bytes());
        hash.update(b"\0");
        hash.update(self.api_key.expose_secret().as_bytes());
        hash.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl Credentials {
    /// `text` (an answer of the API, which might echo the request) with the key blanked out,
    /// as sent or percent-encoded, and any other credential ([`redact`]).
    pub(crate) fn redact(&self, text: &str) -> String {
        redact(text, &[self.api_key.expose_secret()])
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("api_key", &"[REDACTED]")
            .finish()
    }
}

/// A URL that may carry `user:password@` (a proxy, a Redis server): only scheme, host, port and
/// path are ever shown.
#[derive(Clone)]
pub(crate) struct SecretUrl(SecretString);

impl SecretUrl {
    pub(crate) fn new(value: String) -> Self {
        SecretUrl(SecretString::from(value))
    }

    /// The whole URL, password included: only for handing to the client that connects.
    pub(crate) fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({self})")
    }
}

/// What stands where a secret was.
pub(crate) const REDACTED: &str = "[REDACTED]";

/// Parameter names that carry credentials (`password=`, `api_key=`, `token=`, ...), matched
/// as parts of a lower-cased name.
const CREDENTIAL_NAMES: &[&str] = &[
    "pass",
    "pwd",
    "token",
    "secret",
    "key",
    "auth",
    "session",
    "sig",
    "credential",
    "cookie",
];

/// Text from outside (an API message, a provider URL, a store error) with every credential
/// taken out before it is stored, logged or shown: each of `secrets` (as is and URL-encoded),
/// a URL's `user:password@`, the value of a credential-like parameter (`password=...`), the
/// word after `Bearer` or `Basic`, and any long opaque token of letters and digits.
pub(crate) fn redact(text: &str, secrets: &[&str]) -> String {
    let mut text = text.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 4) {
        let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        for form in [secret.to_string(), encoded] {
            text = text.replace(&form, REDACTED);
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut after_scheme = false;
    for piece in text.split_inclusive(char::is_whitespace) {
        let word = piece.trim_end_matches(char::is_whitespace);
        let space = &piece[word.len()..];
        if after_scheme && !word.is_empty() {
            out.push_str(REDACTED);
        } else {
            out.push_str(&redact_word(word));
        }
        out.push_str(space);
        if !word.is_empty() {
            after_scheme = matches!(
                word.to_ascii_lowercase()
                    .trim_matches(|c: char| !c.is_alphanumeric()),
                "bearer" | "basic" | "token"
            );
        }
    }
    out
}

fn redact_word(word: &str) -> String {
    if let Some(at) = word.find("://") {
        let (scheme, rest) = word.split_at(at + 3);
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = match authority.rfind('@') {
            Some(at) => format!("{REDACTED}@{}", &authority[at + 1..]),
            None => authority.to_owned(),
        };
        return format!("{scheme}{authority}{}", redact_parameters(tail));
    }
    redact_parameters(word)
}

/// `name=value` pairs (split on `&`, `;`, `?` and `,`) with credential-like names lose their
/// value; a bare long token is taken out whole.
fn redact_parameters(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest
            .find(['&', ';', '?', ','])
            .map_or(rest.len(), |i| i + 1);
        let (part, next) = rest.split_at(end);
        let (body, separator) = match part.char_indices().last() {
            Some((i, '&' | ';' | '?' | ',')) => part.split_at(i),
            _ => (part, ""),
        };
        match body.split_once(['=', ':']) {
            Some((name, value)) if !value.is_empty() && credential_name(name) => {
                out.push_str(&body[..name.len() + 1]);
                out.push_str(REDACTED);
            }
            _ if looks_like_token(body) => out.push_str(REDACTED),
            _ => out.push_str(body),
        }
        out.push_str(separator);
        rest = next;
    }
    out
}

fn credential_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    CREDENTIAL_NAMES.iter().any(|c| name.contains(c))
}

/// 24 or more characters of letters, digits, `_`, `-`, `+`, `/`, `=` with both letters and
/// digits: an API key, a session id, a signature; never a word, an address or a path.
fn looks_like_token(word: &str) -> bool {
    let word =
        word.trim_matches(|c: char| matches!(c, '"' | '\'' | '(' | ')' | '[' | ']' | '.' | '!'));
    word.len() >= 24
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '/' | '='))
        && word.chars().any(|c| c.is_ascii_digit())
        && word.chars().any(|c| c.is_ascii_alphabetic())
        && !word.contains("//")
}

/// Text from a file, a store or a peer, safe for one log line: control and bidirectional
/// formatting characters escaped (so no line can be forged), at most 128 characters.
pub(crate) fn printable(text: &str) -> String {
    const MAX: usize = 128;
    let mut out = String::new();
    for c in text.chars().take(MAX) {
        let invisible = matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || invisible {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if text.chars().nth(MAX).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(user: &str, key: &str) -> Credentials {
        Credentials {
            username: user.into(),
            api_key: SecretString::from(key.to_owned()),
        }
    }

    #[test]
    fn the_fingerprint_is_stable_one_way_and_scoped_by_account() {
        let a = credentials("alice", "secret-key-1").fingerprint();
        assert_eq!(a, credentials("alice", "secret-key-1").fingerprint());
        assert_eq!(a.len(), 16);
        assert!(!a.contains("secret"));
        assert_ne!(a, credentials("alice", "secret-key-2").fingerprint());
        assert_ne!(a, credentials("bob", "secret-key-1").fingerprint());
    }

    #[test]
    fn an_echoed_key_is_redacted_as_sent_and_encoded() {
        let credentials = credentials("alice", "k3y/with+chars");
        let echoed = "bad request: password=k3y%2Fwith%2Bchars, key k3y/with+chars";
        let shown = credentials.redact(echoed);
        assert!(!shown.contains("k3y"), "{shown}");
        assert_eq!(shown.matches("[REDACTED]").count(), 2, "{shown}");
    }

    #[test]
    fn urls_show_no_password() {
        let url = SecretUrl::new("rediss://:hunter2pw@cache.internal:6380/3".into());
        assert_eq!(url.to_string(), "rediss://cache.internal:6380/3");
        assert!(!format!("{url:?}").contains("hunter2pw"));
        let proxy = SecretUrl::new("http://user:pass@bastion:3128".into());
        assert_eq!(proxy.to_string(), "http://bastion:3128");
    }

    #[test]
    fn credentials_are_taken_out_of_text_from_outside() {
        let key = "k3y-5ecret-7f1d9c2b";
        let cases = [
            (
                format!("Invalid key {key} for user"),
                "Invalid key [REDACTED] for user",
            ),
            ("key k3y-5ecret%2B7f!".to_owned(), "key k3y-5ecret%2B7f!"),
            (
                "see https://u:pw-token@echo.example/ip?token=abc&type=A now".to_owned(),
                "see https://[REDACTED]@echo.example/ip?token=[REDACTED]&type=A now",
            ),
            (
                "password=hunter2&user=bob; Authorization: Bearer abc.def".to_owned(),
                "password=[REDACTED]&user=bob; Authorization: Bearer [REDACTED]",
            ),
            (
                "session id 4f9c2a7b1e8d6f3a0c5b9e2d7a1f4c8b expired".to_owned(),
                "session id [REDACTED] expired",
            ),
            (
                "dns://1.1.1.1/whoami.cloudflare?type=TXT&class=CH".to_owned(),
                "dns://1.1.1.1/whoami.cloudflare?type=TXT&class=CH",
            ),
            (
                "203.0.113.7 is not whitelisted".to_owned(),
                "203.0.113.7 is not whitelisted",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(redact(&text, &[key]), want, "{text}");
        }
        let encoded = "password=k3y%2B5ecret";
        assert_eq!(redact(encoded, &["k3y+5ecret"]), "password=[REDACTED]");
    }

    #[test]
    fn text_from_outside_is_one_printable_line() {
        assert_eq!(printable("pod-1/42"), "pod-1/42");
        assert_eq!(
            printable("a\nlevel=error msg=forged\u{202e}"),
            "a\\nlevel=error msg=forged\\u{202e}"
        );
        let long = "x".repeat(500);
        assert_eq!(printable(&long).chars().count(), 129);
    }
}
