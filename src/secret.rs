//! Secret values: the account credentials and URLs that may carry a password, never shown whole.

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
    /// as sent or percent-encoded.
    pub(crate) fn redact(&self, text: &str) -> String {
        let key = self.api_key.expose_secret();
        if key.is_empty() {
            return text.to_owned();
        }
        let encoded: String = url::form_urlencoded::byte_serialize(key.as_bytes()).collect();
        text.replace(key, "[REDACTED]")
            .replace(&encoded, "[REDACTED]")
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
}
