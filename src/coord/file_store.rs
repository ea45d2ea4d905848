//! The `file:` coordination store: members on one host share a directory, serialized by an OS file lock.

use std::fs::{File, OpenOptions};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Record, Scope, StoreError, millis};
use crate::util::atomic::write_atomically;
use crate::util::clock::unix_now_ms;

pub(crate) struct FileStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// `USER.FINGERPRINT`, with anything outside `[A-Za-z0-9_-]` in the user name hex-escaped.
    prefix: String,
}

/// A file written this far ahead of our clock is clock skew; further, it is not believed.
const FUTURE_SKEW_MS: u64 = 5_000;

#[derive(Serialize, Deserialize)]
struct Expiring<T> {
    value: T,
    expires_at_ms: u64,
    /// Absent in files of earlier versions.
    #[serde(default)]
    written_at_ms: u64,
}

impl<T> Expiring<T> {
    fn new(value: T, ttl: Duration) -> Self {
        let now = unix_now_ms();
        Expiring {
            value,
            expires_at_ms: now.saturating_add(millis(ttl)),
            written_at_ms: now,
        }
    }

    /// Live until it expires; a file written in the future (the wall clock stepped back since,
    /// or a forged file) is dead, or a lease or a budget would hold for as long as it claims.
    fn live(self) -> Option<T> {
        let now = unix_now_ms();
        let believable = self.written_at_ms <= now.saturating_add(FUTURE_SKEW_MS);
        (believable && self.expires_at_ms > now).then_some(self.value)
    }
}

/// Held for the length of one operation; the kernel drops it if the process dies.
struct Locked {
    _file: File,
}

impl Inner {
    fn path(&self, what: &str) -> PathBuf {
        self.dir.join(format!("{}.{what}", self.prefix))
    }

    fn ip_path(&self, what: &str, ip: IpAddr) -> PathBuf {
        // IPv6 colons are not welcome in every file system.
        self.path(&format!("{what}.{}.json", ip.to_string().replace(':', "-")))
    }

    fn fail(&self, path: &Path, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unavailable {
            store: format!("file:{}", self.dir.display()),
            problem: format!("{}: {e}", path.display()),
        }
    }

    fn lock(&self) -> Result<Locked, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.fail(&self.dir, e))?;
        let path = self.path("lock");
        // Never through a symbolic link planted in the directory.
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| self.fail(&path, e))?;
        file.lock().map_err(|e| self.fail(&path, e))?;
        Ok(Locked { _file: file })
    }

    /// Missing, corrupt or expired all read as nothing: every file is replaced whole, so
    /// corruption means someone else wrote there, and the protocol recovers by rewriting.
    fn read<T: DeserializeOwned>(&self, path: &Path) -> Result<Option<T>, StoreError> {
        match std::fs::read(path) {
            Ok(bytes) => Ok(serde_json::from_slice::<Expiring<T>>(&bytes)
                .ok()
                .and_then(Expiring::live)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.fail(path, e)),
        }
    }

    fn write<T: Serialize>(&self, path: &Path, value: &T) -> Result<(), StoreError> {
        let body = serde_json::to_vec(value).map_err(|e| self.fail(path, e))?;
        write_atomically(path, &body).map_err(|e| self.fail(path, e))
    }

    fn remove(&self, path: &Path) -> Result<(), StoreError> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.fail(path, e)),
            _ => Ok(()),
        }
    }
}

impl FileStore {
    pub(crate) fn new(dir: PathBuf, scope: &Scope) -> Self {
        let user: String = scope
            .username
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' => char::from(b).to_string(),
                _ => format!("%{b:02x}"),
            })
            .collect();
        FileStore {
            inner: Arc::new(Inner {
                dir,
                prefix: format!("{user}.{}", scope.fingerprint),
            }),
        }
    }

    /// Runs `operation` under the lock on a blocking thread: file locks block.
    async fn locked<T: Send + 'static>(
        &self,
        operation: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        let store = format!("file:{}", inner.dir.display());
        tokio::task::spawn_blocking(move || {
            let _locked = inner.lock()?;
            operation(&inner)
        })
        .await
        .map_err(|e| StoreError::Unavailable {
            store,
            problem: e.to_string(),
        })?
    }

    pub(crate) async fn read_verified(&self, ip: IpAddr) -> Result<Option<Record>, StoreError> {
        self.locked(move |s| s.read(&s.ip_path("verified", ip)))
            .await
    }

    pub(crate) async fn write_verified(
        &self,
        record: &Record,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let record = Expiring::new(record.clone(), ttl);
        self.locked(move |s| s.write(&s.ip_path("verified", record.value.ip), &record))
            .await
    }

    pub(crate) async fn try_lease(
        &self,
        ip: IpAddr,
        member: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let member = member.to_owned();
        self.locked(move |s| {
            let path = s.ip_path("lease", ip);
            match s.read::<String>(&path)? {
                Some(holder) if holder != member => Ok(Some(holder)),
                _ => s.write(&path, &Expiring::new(member, ttl)).map(|()| None),
            }
        })
        .await
    }

    pub(crate) async fn renew_lease(
        &self,
        ip: IpAddr,
        member: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let member = member.to_owned();
        self.locked(move |s| {
            let path = s.ip_path("lease", ip);
            if s.read::<String>(&path)?.as_ref() != Some(&member) {
                return Ok(false);
            }
            s.write(&path, &Expiring::new(member, ttl)).map(|()| true)
        })
        .await
    }

    pub(crate) async fn release_lease(&self, ip: IpAddr, member: &str) -> Result<(), StoreError> {
        let member = member.to_owned();
        self.locked(move |s| {
            let path = s.ip_path("lease", ip);
            if s.read::<String>(&path)?.as_ref() == Some(&member) {
                s.remove(&path)?;
            }
            Ok(())
        })
        .await
    }

    pub(crate) async fn take_budget(
        &self,
        limit: u32,
        window: Duration,
        _token: &str,
    ) -> Result<Option<Duration>, StoreError> {
        self.locked(move |s| {
            let path = s.path("budget.json");
            let now = unix_now_ms();
            let window_ms = millis(window);
            let mut calls: Vec<u64> = s
                .read::<Vec<u64>>(&path)?
                .unwrap_or_default()
                .into_iter()
                // Bookings from the future are dropped, as in the Redis store.
                .filter(|&at| at.saturating_add(window_ms) > now && at <= now)
                .collect();
            if calls.len() < limit.max(1) as usize {
                calls.push(now);
                s.write(&path, &Expiring::new(calls, window))?;
                return Ok(None);
            }
            let oldest = calls.iter().copied().min().unwrap_or(now);
            Ok(Some(Duration::from_millis(
                oldest.saturating_add(window_ms).saturating_sub(now).max(1),
            )))
        })
        .await
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.locked(|_| Ok(())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> FileStore {
        FileStore::new(
            dir.to_path_buf(),
            &Scope {
                username: "al/ice".into(),
                fingerprint: "00ff".into(),
            },
        )
    }

    #[tokio::test]
    async fn keeps_the_store_contract_in_files_named_by_scope() {
        let dir = tempfile::tempdir().expect("tempdir");
        super::super::contract::assert_store_contract(super::super::Store::File(store(dir.path())))
            .await;
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(
            names.iter().all(|n| n.starts_with("al%2fice.00ff.")),
            "{names:?}"
        );
    }

    #[tokio::test]
    async fn a_planted_lock_link_is_never_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("somebody-elses-file");
        std::fs::write(&target, b"precious").expect("target");
        std::os::unix::fs::symlink(&target, dir.path().join("al%2fice.00ff.lock")).expect("link");
        let e = store(dir.path())
            .ping()
            .await
            .expect_err("a link is refused");
        assert!(e.to_string().contains("al%2fice.00ff.lock"), "{e}");
        assert_eq!(std::fs::read(&target).expect("target"), b"precious");
    }

    #[tokio::test]
    async fn an_unreadable_record_is_a_store_failure_not_an_absent_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store(dir.path());
        let ip: IpAddr = "2001:db8::7".parse().expect("ip");
        assert_eq!(store.read_verified(ip).await.expect("absent"), None);
        // Something that cannot be read where the record goes (here a directory).
        std::fs::create_dir(dir.path().join("al%2fice.00ff.verified.2001-db8--7.json"))
            .expect("dir");
        let e = store.read_verified(ip).await.expect_err("unreadable");
        assert!(e.to_string().contains("verified.2001-db8--7.json"), "{e}");
    }
}
