//! A child process whose output is drained by threads of its own and checked for secrets once
//! it ends, however it ends: an exit, SIGTERM, SIGKILL, or the test dropping it.

use std::io::Read;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::secrets::{assert_clean, leaked_in};

/// How long a dead child's output may take to reach EOF: only a grandchild still holding the
/// pipe would make it longer, and then the output cannot be called complete.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// How a watched child ended, with everything it wrote.
#[derive(Debug)]
pub struct Exited {
    /// The exit code; -1 when a signal ended it.
    pub code: i32,
    /// From the signal (or, without one, the start of the wait) to the exit.
    pub took: Duration,
    pub stdout: String,
    pub stderr: String,
}

/// What the reader threads collected so far, and a bell rung on every new chunk.
struct Output {
    /// Standard output, then standard error.
    streams: Mutex<[Vec<u8>; 2]>,
    grew: watch::Sender<()>,
}

impl Output {
    fn text(&self, stream: usize) -> String {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&streams[stream]).into_owned()
    }

    fn both(&self) -> String {
        format!("{}{}", self.text(0), self.text(1))
    }
}

/// A child with piped output; killed and checked on drop if the test did not end it itself.
pub struct Watched {
    label: String,
    child: Child,
    output: Arc<Output>,
    readers: Vec<JoinHandle<()>>,
    /// Set once the output was drained and checked: nothing is left to do on drop.
    finished: bool,
}

impl Watched {
    /// Starts `command` with standard input closed and both outputs drained into memory;
    /// `label` names the child in failure messages.
    pub fn spawn(label: impl Into<String>, mut command: Command) -> Watched {
        let label = label.into();
        let (out_reader, out_writer) = std::io::pipe().expect("stdout pipe");
        let (err_reader, err_writer) = std::io::pipe().expect("stderr pipe");
        command
            .stdin(Stdio::null())
            .stdout(out_writer)
            .stderr(err_writer)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label}: {e}"));
        // The command holds the pipes' write ends; only the child may keep them, or EOF never comes.
        drop(command);
        let output = Arc::new(Output {
            streams: Mutex::new([Vec::new(), Vec::new()]),
            grew: watch::Sender::new(()),
        });
        let readers = [out_reader, err_reader]
            .into_iter()
            .enumerate()
            .map(|(stream, mut pipe)| {
                let output = Arc::clone(&output);
                std::thread::spawn(move || {
                    let mut chunk = [0u8; 8192];
                    loop {
                        match pipe.read(&mut chunk) {
                            Ok(0) => break,
                            Ok(read) => {
                                output.streams.lock().unwrap_or_else(|p| p.into_inner())[stream]
                                    .extend_from_slice(&chunk[..read]);
                                output.grew.send_replace(());
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        Watched {
            label,
            child,
            output,
            readers,
            finished: false,
        }
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Standard output and error so far (standard output first), checked for secrets.
    pub fn output(&self) -> String {
        let text = self.output.both();
        assert_clean(&self.label, &text);
        text
    }

    /// Standard output so far, checked for secrets.
    pub fn stdout(&self) -> String {
        let text = self.output.text(0);
        assert_clean(&self.label, &text);
        text
    }

    /// Waits until the output so far (standard output, then error) satisfies `done`, or
    /// panics after `within`; returns it.
    pub async fn wait_for_output(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_until(what, within, Output::both, done).await
    }

    /// Waits until standard output so far satisfies `done`, or panics after `within`;
    /// returns it.
    pub async fn wait_for_stdout(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_until(what, within, |output| output.text(0), done)
            .await
    }

    async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        read: impl Fn(&Output) -> String,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = tokio::time::Instant::now() + within;
        let mut grew = self.output.grew.subscribe();
        loop {
            grew.mark_unchanged();
            let text = read(&self.output);
            assert_clean(&self.label, &text);
            if done(&text) {
                return text;
            }
            if tokio::time::timeout_at(deadline, grew.changed())
                .await
                .is_err()
            {
                panic!(
                    "{} did not show {what} within {within:?}:\n{}",
                    self.label,
                    self.output()
                );
            }
        }
    }

    /// Waits for the exit, then for the output to be complete, then checks it.
    pub async fn wait(&mut self, within: Duration) -> Exited {
        let started = Instant::now();
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not exit within {within:?}:\n{}",
                    self.label,
                    self.output.both()
                )
            })
            .unwrap_or_else(|e| panic!("wait for {}: {e}", self.label));
        let took = started.elapsed();
        let drain_deadline = Instant::now() + DRAIN_LIMIT;
        while !self.readers.iter().all(JoinHandle::is_finished) {
            assert!(
                Instant::now() < drain_deadline,
                "{}'s output was still open {DRAIN_LIMIT:?} after it exited",
                self.label
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.finished = true;
        let exited = Exited {
            code: status.code().unwrap_or(-1),
            took,
            stdout: self.output.text(0),
            stderr: self.output.text(1),
        };
        assert_clean(
            &format!("{} (exit {})", self.label, exited.code),
            &format!("{}{}", exited.stdout, exited.stderr),
        );
        exited
    }

    /// Sends `signal` (a name `kill` knows, such as TERM) and waits for the exit.
    pub async fn signal(&mut self, signal: &str, within: Duration) -> Exited {
        let pid = self
            .child
            .id()
            .unwrap_or_else(|| panic!("{} is not running", self.label));
        let signalled = Instant::now();
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await
            .expect("run kill");
        assert!(sent.success(), "kill -{signal} {} failed", self.label);
        let mut exited = self.wait(within).await;
        exited.took = signalled.elapsed();
        exited
    }

    /// SIGKILL: no clean-up at all, as when a node dies; the output is still checked.
    pub async fn kill(&mut self) -> Exited {
        self.child
            .start_kill()
            .unwrap_or_else(|e| panic!("kill {}: {e}", self.label));
        self.wait(DRAIN_LIMIT).await
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let _ = self.child.start_kill();
        // Blocking is fine here: the readers are threads of their own, and a killed child's
        // pipes close as soon as the kernel tears it down.
        let deadline = Instant::now() + DRAIN_LIMIT;
        while !self.readers.iter().all(JoinHandle::is_finished) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let text = self.output.both();
        if let Some(leaked) = leaked_in(&text) {
            let message = format!("{} showed the secret {leaked:?}:\n{text}", self.label);
            if std::thread::panicking() {
                eprintln!("{message}");
            } else {
                panic!("{message}");
            }
        }
    }
}
