//! Atomic file replacement: a reader sees the old file or the new one, never half of one.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Write to a temporary file beside the target, flush it to disk, then rename over the
/// target: a crash or a signal leaves the old file or the new one, never half of one. The
/// temporary file has an unpredictable name and is created with `O_EXCL` (tempfile), so a
/// symbolic link planted in the directory is never followed; a directory that others may
/// write to is used, with a warning.
pub(crate) fn write_atomically(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    warn_if_shared(dir);
    let mut temp = tempfile::Builder::new()
        .prefix(".sendsms-whitelister.")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(body)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Others may write to `dir` (mode o+w): they could swap the file between two runs. Said once
/// per directory, as the coordination store writes often.
fn warn_if_shared(dir: &Path) {
    static WARNED: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 {
        let mut warned = super::lock(&WARNED);
        if warned.iter().any(|d| d == dir) {
            return;
        }
        warned.push(dir.to_path_buf());
        tracing::warn!(
            dir = %dir.display(),
            sticky = mode & 0o1000 != 0,
            "the directory is writable by every user; put state and coordination files in a directory only this user can write"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planted_link_is_never_followed_and_nothing_is_left_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        let target = dir.path().join("state.json");
        // The names of earlier versions, planted in advance.
        for pid in [std::process::id(), 1, 2] {
            let planted = dir.path().join(format!(".state.json.{pid}.tmp"));
            std::os::unix::fs::symlink(&victim, planted).expect("symlink");
        }
        write_atomically(&target, b"new").expect("write");
        write_atomically(&target, b"newer").expect("write again");
        assert_eq!(std::fs::read(&target).expect("target"), b"newer");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        let temps = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with(".sendsms-whitelister."))
            .count();
        assert_eq!(temps, 0);
    }
}
