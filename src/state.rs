//! The state file: verified IPs survive a restart, so an unchanged IP costs no API call; written atomically.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::net::Family;
use crate::secret::Credentials;
use crate::util::atomic::write_atomically;
use crate::util::clock::unix_now_ms;

const FORMAT: &str = "sendsms-whitelister/state/v1";

/// A proof this far ahead of our clock is clock skew; further, it is not believed.
const FUTURE_SKEW_SECS: u64 = 5;

/// One family's verified address and when it was proven.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct VerifiedIp {
    pub(crate) family: Family,
    pub(crate) ip: IpAddr,
    /// Unix seconds.
    pub(crate) verified_at: u64,
}

impl VerifiedIp {
    pub(crate) fn now(ip: IpAddr) -> Self {
        VerifiedIp {
            family: Family::of(ip),
            ip,
            verified_at: unix_now_ms() / 1000,
        }
    }

    pub(crate) fn age(&self) -> Duration {
        Duration::from_secs((unix_now_ms() / 1000).saturating_sub(self.verified_at))
    }
}

/// What the file holds. `owner` ties it to one account, key (by fingerprint) and endpoint, so a
/// file written for another key or copied from another deployment is foreign and ignored; it
/// holds no secret.
#[derive(Debug, Serialize, Deserialize)]
struct StateDocument {
    format: String,
    owner: String,
    verified: Vec<VerifiedIp>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Verified addresses kept across restarts, so an unchanged IP costs no API call.
#[derive(Clone, Debug)]
pub(crate) struct StateFile {
    path: PathBuf,
    owner: String,
}

impl StateFile {
    pub(crate) fn new(path: PathBuf, credentials: &Credentials, api_url: &str) -> Self {
        StateFile {
            path,
            owner: format!(
                "{}.{}@{api_url}",
                credentials.username,
                credentials.fingerprint()
            ),
        }
    }

    /// Missing, corrupt or foreign: nothing is known, and a warning says why.
    pub(crate) fn load(&self) -> Vec<VerifiedIp> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "state file unreadable; starting fresh");
                return Vec::new();
            }
        };
        match serde_json::from_str::<StateDocument>(&text) {
            Ok(doc) if doc.format == FORMAT && doc.owner == self.owner => {
                // Time from a file is data, not truth: a proof dated in the future (a clock
                // that was ahead, an edited file) would stay "fresh" for as long as it claims.
                let latest = (unix_now_ms() / 1000).saturating_add(FUTURE_SKEW_SECS);
                let (believed, future): (Vec<_>, Vec<_>) = doc
                    .verified
                    .into_iter()
                    .partition(|v| v.verified_at <= latest);
                for entry in future {
                    tracing::warn!(path = %self.path.display(), ip = %entry.ip, verified_at = entry.verified_at, "a state entry dated in the future is ignored; the address is proven again");
                }
                believed
            }
            Ok(doc) if doc.format == FORMAT && self.same_account(&doc.owner) => {
                tracing::warn!(path = %self.path.display(), "state file was written for another API key of this account (key rotated?); ignored, so the new key is proven before the sidecar is ready");
                Vec::new()
            }
            Ok(_) => {
                tracing::warn!(path = %self.path.display(), "state file belongs to another account, endpoint or version; ignored");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "state file is corrupt; ignored");
                Vec::new()
            }
        }
    }

    /// The same user name and endpoint with another key's fingerprint.
    fn same_account(&self, owner: &str) -> bool {
        let account = |o: &str| -> Option<(String, String)> {
            let (who, url) = o.split_once('@')?;
            let (user, _fingerprint) = who.rsplit_once('.')?;
            Some((user.to_owned(), url.to_owned()))
        };
        account(owner).is_some_and(|a| Some(a) == account(&self.owner))
    }

    pub(crate) fn save(&self, verified: &[VerifiedIp]) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.clone(),
            source,
        };
        let doc = StateDocument {
            format: FORMAT.to_owned(),
            owner: self.owner.clone(),
            verified: verified.to_vec(),
        };
        let body = serde_json::to_vec_pretty(&doc).map_err(|e| io(std::io::Error::other(e)))?;
        write_atomically(&self.path, &body).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(username: &str, key: &str) -> Credentials {
        Credentials {
            username: username.into(),
            api_key: secrecy::SecretString::from(key.to_owned()),
        }
    }

    #[test]
    fn round_trip_and_foreign_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let alice = credentials("alice", "key-1");
        let file = StateFile::new(path.clone(), &alice, "https://api.example/json");
        assert!(file.load().is_empty(), "missing file");
        let entry = VerifiedIp::now("203.0.113.5".parse().expect("ip"));
        file.save(std::slice::from_ref(&entry)).expect("save");
        assert_eq!(file.load(), vec![entry.clone()]);
        for (user, key) in [("bob", "key-1"), ("alice", "key-2")] {
            let other = StateFile::new(
                path.clone(),
                &credentials(user, key),
                "https://api.example/json",
            );
            assert!(
                other.load().is_empty(),
                "foreign file: {user} with another key"
            );
        }
        let future = VerifiedIp {
            verified_at: unix_now_ms() / 1000 + 365 * 24 * 3600,
            ..entry.clone()
        };
        let far = VerifiedIp {
            verified_at: u64::MAX,
            ..entry.clone()
        };
        file.save(&[future, far]).expect("save");
        assert!(file.load().is_empty(), "entries from the future");
        std::fs::write(&path, b"{ not json").expect("corrupt");
        assert!(file.load().is_empty(), "corrupt file");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            1,
            "no temporary file left"
        );
    }
}
