//! Stalled stores, stepped clocks, planted files and hostile answers (issue 14): one test per
//! defect found by attacking the binary, each named after what an attacker tries (the flood
//! of defect 1 has a binary of its own, `tests/hostile_flood.rs`, so nothing runs beside it
//! while it times `/healthz`). The stalled store is a real redis-server; the clock cases run
//! the binary under libfaketime (`faketime`). Tools missing: the tests say NOT RUN, and fail
//! in CI.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{
    Emulator, KEY, RedisServer, Sidecar, USERNAME, assert_clean, binary, free_port, raw_server,
    require_tool, run, secret, with,
};

/// What the store and the state file call this account and key (`secret::Credentials::fingerprint`).
fn fingerprint(username: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(b"sendsms-whitelister/key-fingerprint/v1\0");
    hash.update(username.as_bytes());
    hash.update(b"\0");
    hash.update(key.as_bytes());
    hash.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// An emulator whose key already allows 127.0.0.1 (so `once` needs one read), or only the
/// bastion 127.0.0.2 (so it needs a read, an add and a proof).
async fn emulator(listed: bool, extra: &[&str]) -> Emulator {
    let allow = if listed { "127.0.0.1" } else { "127.0.0.2" };
    let args: Vec<&str> = ["--allow", allow, "--rate-limit", "0"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    Emulator::start(&args).await
}

fn env_for(emu: &Emulator, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    with(
        with(emu.env(), &[("SENDSMS_BOOTSTRAP_BIND", "127.0.0.2")]),
        extra,
    )
}

// ---------------------------------------------------------------------------------------
// 2. A store that stalls while this member holds the lease.

/// Defect 2: SIGSTOP of redis-server for 8 s while `once` holds the lease deadlocked it
/// forever (the store's lock held across a reconnect, the renewal awaited inside the select).
#[tokio::test]
async fn a_redis_stall_while_holding_the_lease_ends_within_the_verify_timeout_and_a_lease() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    let emu = emulator(false, &["--latency", "1500"]).await;
    let env = env_for(
        &emu,
        &[
            ("SENDSMS_COORDINATION", &redis.url()),
            ("SENDSMS_COORDINATION_LEASE", "3s"),
            ("SENDSMS_VERIFY_TIMEOUT", "15s"),
        ],
    );
    let started = Instant::now();
    let once = tokio::spawn(async move { run(&["once"], &env).await });
    let client = redis::Client::open(redis.url()).expect("redis client");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection");
    loop {
        let leases: Vec<String> = redis::cmd("KEYS")
            .arg("*:lease:*")
            .query_async(&mut connection)
            .await
            .expect("keys");
        if !leases.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the lease was never taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let pid = redis.pid().to_string();
    let signal = |which: &str| {
        let ok = Command::new("kill")
            .args([which, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {which}");
    };
    signal("-STOP");
    tokio::time::sleep(Duration::from_secs(8)).await;
    signal("-CONT");
    let bound = Duration::from_secs(15 + 3 + 2);
    let finished = tokio::time::timeout(
        bound.saturating_sub(started.elapsed()) + Duration::from_secs(1),
        once,
    )
    .await;
    let ran = finished
        .unwrap_or_else(|_| panic!("`once` still ran {:?} after it started", started.elapsed()))
        .expect("once");
    let line = format!(
        "| redis-server stopped (SIGSTOP) for 8 s while `once` held the lease (emulator latency 1.5 s, lease 3 s, `SENDSMS_VERIFY_TIMEOUT=15s`) | exit {} after {:.1} s (bound: 15 s + 3 s) |\n",
        ran.code,
        ran.elapsed.as_secs_f64()
    );
    println!("{line}");
    if let Ok(path) = std::env::var("HOSTILE_STALL_REPORT") {
        std::fs::write(path, &line).expect("write the report");
    }
    assert!(ran.elapsed <= bound, "{ran:?}");
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(emu.requests(0, "token_add_ip").await.0, 1, "one add");
}

// ---------------------------------------------------------------------------------------
// 3. Timestamps far in the future, in the state file and in a fleet record.

fn state_document(owner: &str, verified_at: u64) -> String {
    serde_json::json!({
        "format": "sendsms-whitelister/state/v1",
        "owner": owner,
        "verified": [{"family": "ipv4", "ip": "127.0.0.1", "verified_at": verified_at}],
    })
    .to_string()
}

/// Defect 3 (and the state-file half of defect 6): `verified_at` of 253402300800 or u64::MAX
/// in the state file, or `verified_at_ms` u64::MAX in a fleet record, crashed the process or
/// made an unproven address "verified" for ever. Now it is ignored and the address is proven.
#[tokio::test]
async fn timestamps_from_the_future_in_files_and_records_are_not_believed() {
    let emu = emulator(false, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let owner = format!(
        "{USERNAME}.{}@{}",
        fingerprint(USERNAME, KEY),
        emu.url("/json")
    );
    for (n, verified_at) in [253_402_300_800, u64::MAX, now_ms() / 1000 + 365 * 86_400]
        .into_iter()
        .enumerate()
    {
        let state = dir.path().join(format!("state-{n}.json"));
        std::fs::write(&state, state_document(&owner, verified_at)).expect("state file");
        let before = emu.requests(0, "token_list_ips").await;
        let env = env_for(
            &emu,
            &[("SENDSMS_STATE_FILE", state.to_str().expect("path"))],
        );
        let sidecar = Sidecar::start(&env).await;
        sidecar.wait_readyz(200, Duration::from_secs(20)).await;
        let after = emu.requests(0, "token_list_ips").await;
        assert!(
            after.0 > before.0,
            "verified_at {verified_at}: ready without proving the address"
        );
        let output = sidecar.output();
        assert!(output.contains("dated in the future"), "{output}");
        let code = sidecar.terminate().await.code;
        assert_eq!(code, 0, "verified_at {verified_at}");
    }

    // A fleet record from the future, in the file store.
    let fleet = tempfile::tempdir().expect("fleet dir");
    let record = fleet.path().join(format!(
        "{USERNAME}.{}.verified.127.0.0.1.json",
        fingerprint(USERNAME, KEY)
    ));
    let forged = serde_json::json!({
        "value": {"ip": "127.0.0.1", "verified_at_ms": u64::MAX, "by": "forger/1"},
        "expires_at_ms": now_ms() + 3_600_000,
    });
    std::fs::write(&record, forged.to_string()).expect("record");
    let calls = emu.api_requests().await;
    let env = env_for(
        &emu,
        &[(
            "SENDSMS_COORDINATION",
            &format!("file:{}", fleet.path().display()),
        )],
    );
    let ran = run(&["once"], &env).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(!ran.stdout.contains("verified by fleet member"), "{ran:?}");
    assert!(
        emu.api_requests().await > calls,
        "proven, not taken from the record"
    );
}

// ---------------------------------------------------------------------------------------
// 4. A rotated key.

/// Defect 4: after a key rotation, the state file of the old key made `run` ready with no
/// call for up to the reverify interval, although the new key was not whitelisted.
#[tokio::test]
async fn a_state_file_of_the_previous_key_does_not_make_the_new_key_ready() {
    let new_key = secret("n3w-k3y-rotated-4a8e");
    let emu = emulator(false, &["--default-key", &new_key]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.json");
    let env = env_for(
        &emu,
        &[("SENDSMS_STATE_FILE", state.to_str().expect("path"))],
    );
    let first = Sidecar::start(&env).await;
    first.wait_readyz(200, Duration::from_secs(20)).await;
    assert_eq!(first.terminate().await.code, 0);
    assert!(state.exists());

    let rotated = with(env, &[("SENDSMS_API_KEY", &new_key)]);
    let second = Sidecar::start(&rotated).await;
    second.wait_readyz(200, Duration::from_secs(20)).await;
    let output = second.output();
    assert!(output.contains("another API key"), "{output}");
    assert_eq!(
        emu.requests(1, "token_add_ip").await,
        (1, 0),
        "the new key was whitelisted before it was called ready"
    );
    assert_eq!(second.terminate().await.code, 0);
}

// ---------------------------------------------------------------------------------------
// 5. A status code that is not success.

/// Defect 5: `{"status":7,"message":"account suspended"}` counted as success ("already
/// whitelisted and the key works"), exit 0.
#[tokio::test]
async fn an_unknown_positive_status_is_not_success() {
    let emu = emulator(true, &[]).await;
    let body = br#"{"status":7,"message":"account suspended","details":["127.0.0.1"]}"#;
    let answer = [
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes(),
        body.to_vec(),
    ]
    .concat();
    let (api, _) = raw_server("127.0.0.1:0", answer, Duration::ZERO).await;
    let env = env_for(&emu, &[("SENDSMS_API_URL", &format!("http://{api}/json"))]);
    let ran = run(&["once"], &env).await;
    assert_eq!(ran.code, 5, "{ran:?}");
    assert!(
        ran.stderr.contains("status 7") && ran.stderr.contains("account suspended"),
        "{ran:?}"
    );
    assert!(!ran.stdout.contains("ok:"), "{ran:?}");
    let checked = run(&["check"], &env).await;
    assert_eq!(checked.code, 1, "{checked:?}");
    assert!(checked.stdout.contains("status 7"), "{checked:?}");
}

// ---------------------------------------------------------------------------------------
// 6. A stepped wall clock, and a budget that cannot fit in the deadline.

/// Defect 6: with the wall clock stepped back an hour (libfaketime), `once` with a 5 s verify
/// timeout waited about an hour on the fleet budget booked before the step; and
/// `SENDSMS_API_BUDGET=1` with a 5 s timeout took 120 s.
#[tokio::test]
async fn budget_waits_end_at_the_deadline_whatever_the_wall_clock_says() {
    let Some(faketime) = require_tool("faketime") else {
        return;
    };
    let emu = emulator(true, &[]).await;
    let fleet = tempfile::tempdir().expect("fleet dir");
    let env = env_for(
        &emu,
        &[
            (
                "SENDSMS_COORDINATION",
                &format!("file:{}", fleet.path().display()),
            ),
            ("SENDSMS_API_BUDGET", "1"),
            ("SENDSMS_VERIFY_TIMEOUT", "5s"),
        ],
    );
    // One member books the fleet's one call of this minute, at the real time.
    assert_eq!(run(&["once"], &env).await.code, 0);
    for entry in std::fs::read_dir(fleet.path()).expect("fleet dir") {
        let path = entry.expect("entry").path();
        if path.to_string_lossy().contains(".verified.") {
            std::fs::remove_file(path).expect("the record goes, the budget stays");
        }
    }
    // The next member's wall clock is an hour behind (monotonic time is not faked: an NTP step).
    let started = Instant::now();
    let mut command = tokio::process::Command::new(&faketime);
    command
        .args(["-f", "-1h"])
        .arg(binary())
        .arg("once")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .unwrap_or_else(|_| panic!("`once` an hour behind still waited after 20 s"))
        .expect("faketime once");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_clean("once under faketime", &stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(7),
        "{:?}",
        started.elapsed()
    );

    // Alone, a budget of 1 cannot fit a read, an add and a proof in 5 s: it says so in 5 s.
    let unlisted = emulator(false, &[]).await;
    let env = env_for(
        &unlisted,
        &[
            ("SENDSMS_API_BUDGET", "1"),
            ("SENDSMS_VERIFY_TIMEOUT", "5s"),
        ],
    );
    let ran = tokio::time::timeout(Duration::from_secs(20), run(&["once"], &env))
        .await
        .unwrap_or_else(|_| panic!("`once` with a budget of 1 still waited after 20 s"));
    assert_eq!(ran.code, 5, "{ran:?}");
    assert!(ran.stderr.contains("API budget"), "{ran:?}");
    assert!(ran.elapsed < Duration::from_secs(7), "{ran:?}");

    // `run` whose budget is spent when the app asks for a re-proof: nothing disproves the
    // address, so it stays verified and ready, and the re-proof is tried again later.
    let listed = emulator(true, &[]).await;
    let env = env_for(
        &listed,
        &[
            ("SENDSMS_API_BUDGET", "1"),
            ("SENDSMS_VERIFY_TIMEOUT", "2s"),
            ("SENDSMS_RECHECK_MIN_INTERVAL", "1s"),
        ],
    );
    let sidecar = Sidecar::start(&env).await;
    sidecar.wait_readyz(200, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (code, _) = sidecar.request(reqwest::Method::POST, "/recheck").await;
    assert_eq!(code, 200);
    sidecar
        .wait_for_log("re-proof postponed", Duration::from_secs(10))
        .await;
    assert!(sidecar.ready().await, "a spent budget dropped readiness");
    assert_eq!(
        listed.api_requests().await,
        1,
        "the budget of 1 a minute held"
    );
    assert_eq!(sidecar.terminate().await.code, 0);
}

// ---------------------------------------------------------------------------------------
// 7. Secrets in provider URLs and in API messages.

/// Defect 7: provider URLs were shown with their userinfo and query token (`detect`,
/// `/status`, logs), and an API message echoing the key was shown verbatim.
#[tokio::test]
async fn credentials_in_provider_urls_and_api_messages_are_never_shown() {
    let failing =
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    let (provider, _) = raw_server("127.0.0.1:0", failing.to_vec(), Duration::ZERO).await;
    let providers = format!(
        "http://echo-user:pw-s3cr3t-9@{provider}/ip?token=t0k3n-s3cr3t-9#one,http://{provider}/ip?sig=Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5#two"
    );
    let env: Vec<(String, String)> = [
        ("SENDSMS_IP_PROVIDERS", providers.as_str()),
        ("SENDSMS_ALLOW_NON_PUBLIC_IPS", "true"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let detected = run(&["detect"], &env).await;
    assert_eq!(detected.code, 3, "{detected:?}");
    for secret in [
        "pw-s3cr3t-9",
        "t0k3n-s3cr3t-9",
        "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5",
    ] {
        assert!(
            !detected.stderr.contains(secret) && !detected.stdout.contains(secret),
            "{secret} shown: {detected:?}"
        );
    }
    assert!(
        detected
            .stderr
            .contains(&format!("http://{provider}/ip?[REDACTED]#one")),
        "{detected:?}"
    );

    // An API that echoes the key in its message (`run` asserts the key is in no output).
    let emu = emulator(true, &[]).await;
    let body = format!(
        r#"{{"status":-8,"message":"Invalid password {KEY} for tester, session=abc123def"}}"#
    );
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let (api, _) = raw_server("127.0.0.1:0", answer.into_bytes(), Duration::ZERO).await;
    let env = env_for(
        &emu,
        &[
            ("SENDSMS_API_URL", &format!("http://{api}/json")),
            ("SENDSMS_VERIFY_TIMEOUT", "2s"),
        ],
    );
    let checked = run(&["check"], &env).await;
    assert!(
        checked.stdout.contains("Invalid password [REDACTED]"),
        "{checked:?}"
    );
    assert!(!checked.stdout.contains("abc123def"), "{checked:?}");
    let sidecar = Sidecar::start(&env).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // `Sidecar::request` asserts the key is in no answer.
        let status = sidecar.status().await;
        if status["last_error"].is_string() {
            assert!(status.to_string().contains("[REDACTED]"), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "no error shown: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(sidecar.terminate().await.code, 0);
}

// ---------------------------------------------------------------------------------------
// 8. Planted symbolic links.

/// Defect 8: temporary files had predictable names (`.NAME.PID.tmp`) opened with
/// `File::create`, and the lock file was opened the same way: a planted link overwrote or
/// created its target.
#[tokio::test]
async fn planted_links_for_temporary_and_lock_files_are_never_followed() {
    let emu = emulator(true, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").expect("victim");
    let state = dir.path().join("state.json");
    let env = env_for(
        &emu,
        &[("SENDSMS_STATE_FILE", state.to_str().expect("path"))],
    );
    // `exec` keeps the shell's pid, so the link sits where the old name would be.
    let plant = format!(
        "ln -s {} {}/.state.json.$$.tmp && exec \"$0\" \"$@\"",
        victim.display(),
        dir.path().display()
    );
    let sidecar = Sidecar::start_with(
        &["sh", "-c", &plant],
        &env,
        ([127, 0, 0, 1], free_port()).into(),
    )
    .await;
    sidecar.wait_readyz(200, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !state.exists() {
        assert!(Instant::now() < deadline, "no state file written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(sidecar.terminate().await.code, 0);
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");

    // The lock file of a fleet directory, replaced by a link to a file that does not exist.
    let fleet = tempfile::tempdir().expect("fleet dir");
    let fleet_env = env_for(
        &emu,
        &[(
            "SENDSMS_COORDINATION",
            &format!("file:{}", fleet.path().display()),
        )],
    );
    assert_eq!(run(&["once"], &fleet_env).await.code, 0);
    let lock = fleet
        .path()
        .join(format!("{USERNAME}.{}.lock", fingerprint(USERNAME, KEY)));
    assert!(lock.exists(), "the lock file is where it is expected");
    std::fs::remove_file(&lock).expect("remove the lock");
    let target = dir.path().join("created-through-a-link");
    std::os::unix::fs::symlink(&target, &lock).expect("plant the link");
    let ran = run(&["once"], &fleet_env).await;
    assert_eq!(ran.code, 0, "the member acts alone: {ran:?}");
    assert!(!target.exists(), "the lock was opened through the link");
}

// ---------------------------------------------------------------------------------------
// 9. A closed standard output or error.

/// Runs the binary with standard output and error both pipes whose reading end is closed.
fn run_with_closed_output(args: &[&str], env: &[(String, String)]) -> (Option<i32>, Duration) {
    let (reader, out) = std::io::pipe().expect("pipe");
    let err = out.try_clone().expect("pipe");
    drop(reader);
    let started = Instant::now();
    let status = Command::new(binary())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .expect("run the binary");
    (status.code(), started.elapsed())
}

/// Defect 9: `check | (exec 0<&-; true)` panicked ("failed printing to stdout") with exit
/// 134, even after `once` had done its work; so did an error message on a closed stderr.
#[tokio::test]
async fn a_closed_output_keeps_the_commands_own_exit_code() {
    let emu = emulator(true, &[]).await;
    let env = env_for(&emu, &[]);
    assert_eq!(run_with_closed_output(&["once"], &env).0, Some(0));
    assert_eq!(run_with_closed_output(&["check"], &env).0, Some(0));
    let broken = with(env, &[("SENDSMS_POLL_INTERVAL", "soon")]);
    assert_eq!(run_with_closed_output(&["once"], &broken).0, Some(2));
}

// ---------------------------------------------------------------------------------------
// 10. Hazardous configuration and forged store fields.

/// Defect 10: a 1 ns lease spun against Redis, a 1 ms poll hammered public echo services,
/// `/dev/zero` as a key file read without end and a FIFO hung the start; a store record's
/// `by` field wrote raw control characters into text logs.
#[tokio::test]
async fn hazardous_settings_and_forged_store_fields_are_refused() {
    let emu = emulator(true, &[]).await;
    let env = env_for(&emu, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("key.fifo");
    let made = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    assert!(made, "mkfifo");
    let fifo = fifo.display().to_string();
    for (var, value, says) in [
        ("SENDSMS_COORDINATION_LEASE", "1ns", "at least 1s"),
        ("SENDSMS_POLL_INTERVAL", "1ms", "at least 1s"),
        ("SENDSMS_API_KEY_FILE", "/dev/zero", "not a regular file"),
        ("SENDSMS_API_KEY_FILE", fifo.as_str(), "not a regular file"),
    ] {
        let mut env = with(env.clone(), &[(var, value)]);
        if var == "SENDSMS_API_KEY_FILE" {
            env.retain(|(k, _)| k != "SENDSMS_API_KEY");
        }
        let ran = tokio::time::timeout(Duration::from_secs(10), run(&["once"], &env))
            .await
            .unwrap_or_else(|_| panic!("{var}={value}: still starting after 10 s"));
        assert_eq!(ran.code, 2, "{var}={value}: {ran:?}");
        assert!(
            ran.stderr.contains(var) && ran.stderr.contains(says),
            "{ran:?}"
        );
    }

    // A lease held by a "member" whose name forges a log line.
    let fleet = tempfile::tempdir().expect("fleet dir");
    let lease = fleet.path().join(format!(
        "{USERNAME}.{}.lease.127.0.0.1.json",
        fingerprint(USERNAME, KEY)
    ));
    let forged = serde_json::json!({
        "value": "evil/1\nFORGED level=ERROR the key was revoked",
        "expires_at_ms": now_ms() + 60_000,
        "written_at_ms": now_ms(),
    });
    std::fs::write(&lease, forged.to_string()).expect("lease");
    let env = with(
        env,
        &[
            (
                "SENDSMS_COORDINATION",
                &format!("file:{}", fleet.path().display()),
            ),
            ("SENDSMS_VERIFY_TIMEOUT", "1s"),
            ("SENDSMS_COORDINATION_LEASE", "1s"),
        ],
    );
    let ran = run(&["once"], &env).await;
    assert_eq!(ran.code, 5, "another member holds the lease: {ran:?}");
    assert!(ran.stderr.contains("evil/1\\nFORGED"), "{ran:?}");
    assert!(
        !ran.stderr.lines().any(|l| l.starts_with("FORGED")),
        "a forged log line: {ran:?}"
    );
}
