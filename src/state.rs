//! The state file: verified IPs survive a restart, so an unchanged IP costs no API call; written atomically.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::detect::Family;

const FORMAT: &str = "sendsms-whitelister/state/v1";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedIp {
    pub family: Family,
    pub ip: IpAddr,
    /// Unix seconds.
    pub verified_at: u64,
}

impl VerifiedIp {
    pub fn now(ip: IpAddr) -> Self {
        VerifiedIp {
            family: Family::of(ip),
            ip,
            verified_at: unix_now(),
        }
    }

    pub fn age(&self) -> Duration {
        Duration::from_secs(unix_now().saturating_sub(self.verified_at))
    }
}

pub fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Write to a temporary file beside the target, flush it to disk, then rename over the
/// target: a crash or a signal leaves the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::File::create(&temp).and_then(|mut file| {
        file.write_all(body)?;
        file.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&temp, path)) {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(())
}

/// What the file holds. `owner` ties it to one account and endpoint, so a file copied from
/// another deployment is foreign and ignored; it holds no secret.
#[derive(Debug, Serialize, Deserialize)]
struct StateDocument {
    format: String,
    owner: String,
    verified: Vec<VerifiedIp>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct StateFile {
    path: PathBuf,
    owner: String,
}

impl StateFile {
    pub fn new(path: PathBuf, username: &str, api_url: &str) -> Self {
        StateFile {
            path,
            owner: format!("{username}@{api_url}"),
        }
    }

    /// Missing, corrupt or foreign: nothing is known, and a warning says why.
    pub fn load(&self) -> Vec<VerifiedIp> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "state file unreadable; starting fresh");
                return Vec::new();
            }
        };
        match serde_json::from_str::<StateDocument>(&text) {
            Ok(doc) if doc.format == FORMAT && doc.owner == self.owner => doc.verified,
            Ok(_) => {
                tracing::warn!(path = %self.path.display(), "state file belongs to another account or version; ignored");
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "state file is corrupt; ignored");
                Vec::new()
            }
        }
    }

    pub fn save(&self, verified: &[VerifiedIp]) -> Result<(), StateError> {
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

    #[test]
    fn round_trip_and_foreign_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let file = StateFile::new(path.clone(), "alice", "https://api.example/json");
        assert!(file.load().is_empty(), "missing file");
        let entry = VerifiedIp::now("203.0.113.5".parse().expect("ip"));
        file.save(std::slice::from_ref(&entry)).expect("save");
        assert_eq!(file.load(), vec![entry]);
        let other = StateFile::new(path.clone(), "bob", "https://api.example/json");
        assert!(other.load().is_empty(), "foreign file");
        std::fs::write(&path, b"{ not json").expect("corrupt");
        assert!(file.load().is_empty(), "corrupt file");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            1,
            "no temporary file left"
        );
    }
}
