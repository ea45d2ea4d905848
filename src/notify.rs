//! Notifications and heartbeats: webhooks hear about changes and failures, a monitor hears the loop is alive.
//!
//! The control loop never waits for a webhook: it hands each event to a bounded queue and goes
//! on. A dispatcher task chooses which events go out (and times `not_ready_for`); each target
//! has its own worker and queue, so a dead or hanging target delays nobody but itself. An event
//! that does not fit in a full queue is dropped and counted.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use url::Url;

use crate::http;
use crate::metrics::Metrics;
use crate::net::Family;
use crate::secret::SecretUrl;
use crate::util::backoff::Backoff;
use crate::util::clock::rfc3339_now;
use crate::util::{host_name, lock};

/// What happened, as a notification names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A family's egress IP changed.
    IpChanged,
    /// An IP was added to the whitelist and proven.
    Whitelisted,
    /// A whitelist-and-verify round failed.
    VerificationFailed,
    /// The sidecar has not been ready for the configured time.
    NotReadyFor,
    /// Ready again after `not_ready_for` or `verification_failed` was sent.
    Recovered,
    /// Sent by `notify-test` only.
    Test,
}

impl Kind {
    /// The events `SENDSMS_NOTIFY_EVENTS` can choose (all of them by default).
    pub(crate) const CHOOSABLE: [Kind; 5] = [
        Kind::IpChanged,
        Kind::Whitelisted,
        Kind::VerificationFailed,
        Kind::NotReadyFor,
        Kind::Recovered,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::IpChanged => "ip_changed",
            Kind::Whitelisted => "whitelisted",
            Kind::VerificationFailed => "verification_failed",
            Kind::NotReadyFor => "not_ready_for",
            Kind::Recovered => "recovered",
            Kind::Test => "test",
        }
    }
}

/// The body style a target expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// The event as JSON (documented in the README).
    Json,
    /// `{"text": ...}`, for Slack incoming webhooks and what imitates them (Mattermost, Rocket.Chat).
    Slack,
    /// `{"content": ...}`, for Discord webhooks.
    Discord,
}

/// `scheme://host[:port]`: all of a URL that may be shown (webhook tokens live in paths and
/// queries, passwords in user info).
fn shown(url: &Url) -> String {
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    format!("{}://{}{port}", url.scheme(), url.host_str().unwrap_or("?"))
}

/// An http(s) URL; the error never repeats the text, which may hold a token.
fn web_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|_| "not a URL".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme {:?} is not http or https", url.scheme()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("a URL without a host".into());
    }
    Ok(url)
}

/// One webhook: its URL (a secret) and the body style it expects.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    url: SecretUrl,
    format: Format,
    shown: String,
}

impl Target {
    /// The forms `SENDSMS_NOTIFY_URLS` accepts, for errors.
    pub(crate) const EXPECTED: &'static str = "comma-separated http(s) webhook URLs, each \
         optionally prefixed json+, slack+ or discord+ (Slack and Discord webhook URLs are \
         recognised by their host)";

    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (format, rest) = match text.split_once('+') {
            Some(("json", rest)) => (Some(Format::Json), rest),
            Some(("slack", rest)) => (Some(Format::Slack), rest),
            Some(("discord", rest)) => (Some(Format::Discord), rest),
            _ => (None, text),
        };
        let url = web_url(rest)?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let format = format.unwrap_or(match host.as_str() {
            "hooks.slack.com" => Format::Slack,
            "discord.com" | "discordapp.com" | "ptb.discord.com" | "canary.discord.com"
                if url.path().starts_with("/api/webhooks/") =>
            {
                Format::Discord
            }
            _ => Format::Json,
        });
        Ok(Target {
            shown: shown(&url),
            url: SecretUrl::new(rest.to_owned()),
            format,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// The monitor pinged after each round: Healthchecks.io style (the URL when well, `URL/fail`
/// when not), or Uptime Kuma's push URL (`/api/push/`), with `status=up` or `status=down`.
#[derive(Clone, Debug)]
pub(crate) struct Heartbeat {
    url: SecretUrl,
    kuma: bool,
    shown: String,
}

impl Heartbeat {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let url = web_url(text.trim())?;
        Ok(Heartbeat {
            kuma: url.path().contains("/api/push/"),
            shown: shown(&url),
            url: SecretUrl::new(text.trim().to_owned()),
        })
    }

    /// The URL to call for a round that ended well (`ok`) or not.
    fn url(&self, ok: bool) -> String {
        let Ok(mut url) = Url::parse(self.url.expose()) else {
            return self.url.expose().to_owned();
        };
        if self.kuma {
            let kept: Vec<(String, String)> = url
                .query_pairs()
                .filter(|(k, _)| k != "status" && k != "msg")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(kept)
                .append_pair("status", if ok { "up" } else { "down" })
                .append_pair("msg", if ok { "OK" } else { "not ready" });
        } else if !ok {
            let path = format!("{}/fail", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        url.into()
    }
}

impl fmt::Display for Heartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

/// What the notifications need from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) targets: Vec<Target>,
    /// The events that go out (`SENDSMS_NOTIFY_EVENTS`).
    pub(crate) chosen: Vec<Kind>,
    /// How long the sidecar is not ready before `not_ready_for` goes out.
    pub(crate) not_ready_for: Duration,
    pub(crate) heartbeat: Option<Heartbeat>,
    /// Failed deliveries are tried again after these delays, `attempts` times in all.
    pub(crate) retry: Backoff,
    pub(crate) attempts: u32,
    /// One delivery attempt, connect included.
    pub(crate) timeout: Duration,
}

impl Settings {
    /// Nothing to notify and no heartbeat: no task is started.
    pub(crate) fn is_off(&self) -> bool {
        self.targets.is_empty() && self.heartbeat.is_none()
    }
}

/// The default retry: 1 s doubling to 1 min, five attempts (about 2 min in all).
pub(crate) const RETRY: Backoff = Backoff {
    min: Duration::from_secs(1),
    max: Duration::from_secs(60),
    jitter: 0.2,
};

/// One event, as every target hears it. The JSON form is this struct.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Event {
    pub(crate) event: Kind,
    pub(crate) time: String,
    /// The pod or host that sends it.
    pub(crate) host: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) family: Option<Family>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) previous_ip: Option<IpAddr>,
    /// How long the sidecar has not been ready (`not_ready_for`, `recovered`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) not_ready_seconds: Option<u64>,
    /// One line for people.
    pub(crate) message: String,
}

impl Event {
    pub(crate) fn new(event: Kind, message: impl Into<String>) -> Self {
        Event {
            event,
            time: rfc3339_now(),
            host: host_name(),
            family: None,
            ip: None,
            previous_ip: None,
            not_ready_seconds: None,
            message: message.into(),
        }
    }

    pub(crate) fn about(mut self, family: Family, ip: IpAddr) -> Self {
        self.family = Some(family);
        self.ip = Some(ip);
        self
    }

    pub(crate) fn ip_changed(family: Family, old: IpAddr, new: IpAddr) -> Self {
        let mut event = Event::new(
            Kind::IpChanged,
            format!("the {family} egress IP changed from {old} to {new}"),
        )
        .about(family, new);
        event.previous_ip = Some(old);
        event
    }

    fn body(&self, format: Format) -> Value {
        let line = format!("sendsms-whitelister on {}: {}", self.host, self.message);
        match format {
            Format::Json => serde_json::to_value(self).unwrap_or(Value::Null),
            Format::Slack => json!({ "text": line }),
            Format::Discord => json!({ "content": line }),
        }
    }
}

/// What `/status` shows of one target.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct TargetStatus {
    /// The target without its path, query or password.
    pub(crate) target: String,
    /// False after a delivery failed every attempt, until one succeeds.
    pub(crate) up: bool,
    pub(crate) delivered: u64,
    pub(crate) failed: u64,
    /// Events that did not fit in its queue.
    pub(crate) dropped: u64,
    pub(crate) last_error: Option<String>,
}

/// What the loop tells the dispatcher.
enum Message {
    Event(Event),
    Readiness { ready: bool, reason: String },
    Round { ok: bool },
}

/// How many messages may wait for the dispatcher, and events for one target.
const QUEUE: usize = 256;
const TARGET_QUEUE: usize = 32;

/// The loop's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub(crate) struct Notifier {
    tx: mpsc::Sender<Message>,
    targets: Arc<Vec<Arc<Mutex<TargetStatus>>>>,
}

impl Notifier {
    /// Starts the dispatcher, one worker per target and the heartbeat; None when nothing is
    /// configured.
    pub(crate) fn start(settings: Settings, metrics: Arc<Metrics>) -> Option<Self> {
        if settings.is_off() {
            return None;
        }
        let client = client(&settings);
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut statuses = Vec::new();
        let mut workers = Vec::new();
        for target in &settings.targets {
            let status = Arc::new(Mutex::new(TargetStatus {
                target: target.to_string(),
                up: true,
                delivered: 0,
                failed: 0,
                dropped: 0,
                last_error: None,
            }));
            metrics.notify_target_up(&target.shown, true);
            let (worker_tx, worker_rx) = mpsc::channel(TARGET_QUEUE);
            tokio::spawn(serve_target(
                worker_rx,
                target.clone(),
                client.clone(),
                settings.clone(),
                Arc::clone(&status),
                Arc::clone(&metrics),
            ));
            workers.push((worker_tx, Arc::clone(&status)));
            statuses.push(status);
        }
        let heartbeat = settings.heartbeat.clone().map(|heartbeat| {
            let (beat_tx, beat_rx) = watch::channel(true);
            tokio::spawn(serve_heartbeat(
                beat_rx,
                heartbeat,
                client.clone(),
                Arc::clone(&metrics),
            ));
            beat_tx
        });
        tokio::spawn(dispatch(rx, settings, workers, heartbeat, metrics));
        Some(Notifier {
            tx,
            targets: Arc::new(statuses),
        })
    }

    /// Hands an event over; when the queue is full it is dropped (and counted by no target,
    /// as none received it).
    pub(crate) fn event(&self, event: Event) {
        let _ = self.tx.try_send(Message::Event(event));
    }

    /// Readiness changed.
    pub(crate) fn readiness(&self, ready: bool, reason: &str) {
        let _ = self.tx.try_send(Message::Readiness {
            ready,
            reason: reason.to_owned(),
        });
    }

    /// A round ended, well (ready) or not: the heartbeat's news.
    pub(crate) fn round(&self, ok: bool) {
        let _ = self.tx.try_send(Message::Round { ok });
    }

    /// Each target's state, for `/status`.
    pub(crate) fn status(&self) -> Vec<TargetStatus> {
        self.targets.iter().map(|t| lock(t).clone()).collect()
    }
}

fn client(settings: &Settings) -> Option<reqwest::Client> {
    http::client_builder(settings.timeout, None)
        .build()
        .map_err(|e| tracing::warn!(error = %http::describe(e), "the notification client cannot be built"))
        .ok()
}

/// Chooses what goes out, times `not_ready_for`, and feeds the workers and the heartbeat.
async fn dispatch(
    mut rx: mpsc::Receiver<Message>,
    settings: Settings,
    workers: Vec<(mpsc::Sender<Event>, Arc<Mutex<TargetStatus>>)>,
    heartbeat: Option<watch::Sender<bool>>,
    metrics: Arc<Metrics>,
) {
    let send = |event: Event| {
        if event.event != Kind::Test && !settings.chosen.contains(&event.event) {
            return;
        }
        for (worker, status) in &workers {
            if worker.try_send(event.clone()).is_err() {
                let target = {
                    let mut status = lock(status);
                    status.dropped += 1;
                    status.target.clone()
                };
                metrics.count_notification(&target, "dropped");
            }
        }
    };
    // The loop starts unready: a sidecar that never gets ready is worth a word too.
    let mut unready_since = Some((Instant::now(), "starting".to_owned()));
    let mut told = false;
    loop {
        let due = unready_since
            .as_ref()
            .filter(|_| !told)
            .map(|(since, _)| *since + settings.not_ready_for);
        let timer = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            message = rx.recv() => match message {
                None => return,
                Some(Message::Event(event)) => {
                    told |= event.event == Kind::VerificationFailed;
                    send(event);
                }
                Some(Message::Readiness { ready: true, reason }) => {
                    if let Some((since, _)) = unready_since.take().filter(|_| told) {
                        let mut event = Event::new(Kind::Recovered, format!("ready again: {reason}"));
                        event.not_ready_seconds = Some(since.elapsed().as_secs());
                        send(event);
                    }
                    told = false;
                }
                Some(Message::Readiness { ready: false, reason }) => {
                    match &mut unready_since {
                        Some((_, why)) => *why = reason,
                        None => unready_since = Some((Instant::now(), reason)),
                    }
                }
                Some(Message::Round { ok }) => {
                    if let Some(beat) = &heartbeat {
                        beat.send_replace(ok);
                    }
                }
            },
            () = timer => {
                if let Some((since, why)) = &unready_since {
                    let seconds = since.elapsed().as_secs();
                    let mut event = Event::new(
                        Kind::NotReadyFor,
                        format!("not ready for {seconds} s: {why}"),
                    );
                    event.not_ready_seconds = Some(seconds);
                    send(event);
                }
                told = true;
            }
        }
    }
}

/// One target's worker: its events in order, each retried until accepted or out of attempts.
async fn serve_target(
    mut rx: mpsc::Receiver<Event>,
    target: Target,
    client: Option<reqwest::Client>,
    settings: Settings,
    status: Arc<Mutex<TargetStatus>>,
    metrics: Arc<Metrics>,
) {
    while let Some(event) = rx.recv().await {
        let result = match &client {
            Some(client) => deliver(client, &target, &event, &settings).await,
            None => Err("no HTTP client".to_owned()),
        };
        let outcome = {
            let mut status = lock(&status);
            match &result {
                Ok(()) => {
                    status.delivered += 1;
                    status.up = true;
                    status.last_error = None;
                    "delivered"
                }
                Err(e) => {
                    status.failed += 1;
                    status.up = false;
                    status.last_error = Some(e.clone());
                    "failed"
                }
            }
        };
        if let Err(e) = &result {
            tracing::warn!(target = %target, event = event.event.as_str(), error = %e, "notification not delivered");
        }
        metrics.count_notification(&target.shown, outcome);
        metrics.notify_target_up(&target.shown, result.is_ok());
    }
}

/// Posts `event` to `target`, trying again after a failure that may pass (a transport error,
/// HTTP 408, 429 or 5xx), up to `settings.attempts` times. A timeout may have been delivered
/// after all, so a receiver can, rarely, see an event twice.
pub(crate) async fn deliver(
    client: &reqwest::Client,
    target: &Target,
    event: &Event,
    settings: &Settings,
) -> Result<(), String> {
    let body = serde_json::to_vec(&event.body(target.format)).map_err(|e| e.to_string())?;
    let mut delays = settings.retry.delays();
    let mut last = String::from("not tried");
    for attempt in 1..=settings.attempts.max(1) {
        let sent = client
            .post(target.url.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let code = response.status().as_u16();
                last = format!("HTTP {code}");
                if !(code == 408 || code == 429 || code >= 500) {
                    return Err(last);
                }
            }
            Err(e) => last = http::describe(e),
        }
        if attempt < settings.attempts {
            tokio::time::sleep(delays.next().unwrap_or(settings.retry.max)).await;
        }
    }
    Err(last)
}

/// Pings the heartbeat with each round's news; a newer round replaces one not yet sent.
async fn serve_heartbeat(
    mut rx: watch::Receiver<bool>,
    heartbeat: Heartbeat,
    client: Option<reqwest::Client>,
    metrics: Arc<Metrics>,
) {
    // The initial value is no news: wait for a round.
    while rx.changed().await.is_ok() {
        let ok = *rx.borrow_and_update();
        let Some(client) = &client else { continue };
        let result = client.get(heartbeat.url(ok)).send().await;
        let failure = match result {
            Ok(response) if response.status().is_success() => None,
            Ok(response) => Some(format!("HTTP {}", response.status().as_u16())),
            Err(e) => Some(http::describe(e)),
        };
        if let Some(why) = failure {
            metrics.heartbeat_failures.inc();
            tracing::warn!(heartbeat = %heartbeat, error = %why, "heartbeat not delivered");
        }
    }
}

/// `notify-test`: one test event to every target, each tried a few times; each target's result.
pub(crate) async fn test_all(settings: &Settings) -> Vec<(String, Result<(), String>)> {
    let Some(client) = client(settings) else {
        return settings
            .targets
            .iter()
            .map(|t| (t.to_string(), Err("no HTTP client".to_owned())))
            .collect();
    };
    let event = Event::new(
        Kind::Test,
        "a test notification: this target will hear about IP changes and failures",
    );
    let mut results = Vec::new();
    for target in &settings.targets {
        let result = deliver(&client, target, &event, settings).await;
        results.push((target.to_string(), result));
    }
    results
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use axum::Router;
    use axum::body::Bytes;
    use axum::extract::State;
    use axum::http::{StatusCode, Uri};
    use axum::routing::any;

    use super::*;

    /// What a local receiver saw: (path and query, body), in order.
    type Seen = Arc<Mutex<Vec<(String, Value)>>>;

    /// A receiver on loopback that fails the first `failures` requests with 503, hangs for
    /// ever when `hang`, and otherwise records and accepts.
    async fn receiver(failures: u32, hang: bool) -> (String, Seen) {
        #[derive(Clone)]
        struct Receiver {
            seen: Seen,
            failures: Arc<AtomicU32>,
            hang: bool,
        }
        async fn take(State(r): State<Receiver>, uri: Uri, body: Bytes) -> StatusCode {
            if r.hang {
                std::future::pending::<()>().await;
            }
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            lock(&r.seen).push((uri.to_string(), body));
            let left = r.failures.load(Ordering::SeqCst);
            if left > 0 {
                r.failures.store(left - 1, Ordering::SeqCst);
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            StatusCode::OK
        }
        let seen: Seen = Arc::default();
        let state = Receiver {
            seen: Arc::clone(&seen),
            failures: Arc::new(AtomicU32::new(failures)),
            hang,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new().fallback(any(take)).with_state(state);
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    fn settings(targets: &[String], chosen: &[Kind]) -> Settings {
        Settings {
            targets: targets
                .iter()
                .map(|t| Target::parse(t).expect("target"))
                .collect(),
            chosen: chosen.to_vec(),
            not_ready_for: Duration::from_millis(200),
            heartbeat: None,
            retry: Backoff {
                min: Duration::from_millis(10),
                max: Duration::from_millis(40),
                jitter: 0.0,
            },
            attempts: 5,
            timeout: Duration::from_secs(2),
        }
    }

    /// Waits until `seen` holds `n` requests (or fails after 5 s).
    async fn until(seen: &Seen, n: usize) -> Vec<(String, Value)> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let now = lock(seen).clone();
            if now.len() >= n {
                return now;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {n} requests arrived: {now:?}",
                now.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn targets_and_heartbeats_never_show_their_secrets() {
        let slack =
            Target::parse("https://hooks.slack.com/services/T0/B0/s3cr3tPath").expect("slack");
        assert_eq!(
            (slack.format, slack.to_string()),
            (Format::Slack, "https://hooks.slack.com".into())
        );
        let discord =
            Target::parse("https://discord.com/api/webhooks/1/s3cr3tPath").expect("discord");
        assert_eq!(discord.format, Format::Discord);
        let forced = Target::parse("slack+https://chat.example.net:8443/hooks/s3cr3tPath?t=1")
            .expect("prefix");
        assert_eq!(
            (forced.format, forced.to_string()),
            (Format::Slack, "https://chat.example.net:8443".into())
        );
        let json = Target::parse("https://user:s3cr3tPass@example.net/hook").expect("json");
        assert_eq!(json.format, Format::Json);
        assert!(!format!("{json:?}").contains("s3cr3t"));
        for bad in ["ftp://example.net/x", "not a url", "https://"] {
            let e = Target::parse(bad).expect_err(bad);
            assert!(!e.contains("example.net/x"), "{e}");
        }
        let hc = Heartbeat::parse("https://hc-ping.com/s3cr3t-uuid").expect("hc");
        assert_eq!(hc.url(true), "https://hc-ping.com/s3cr3t-uuid");
        assert_eq!(hc.url(false), "https://hc-ping.com/s3cr3t-uuid/fail");
        assert_eq!(hc.to_string(), "https://hc-ping.com");
        let kuma =
            Heartbeat::parse("https://kuma.example.net/api/push/s3cr3t?status=up&msg=OK&ping=")
                .expect("kuma");
        assert_eq!(
            kuma.url(false),
            "https://kuma.example.net/api/push/s3cr3t?ping=&status=down&msg=not+ready"
        );
    }

    #[tokio::test]
    async fn chosen_events_arrive_as_documented_and_others_do_not() {
        let (base, seen) = receiver(0, false).await;
        let (slack_base, slack_seen) = receiver(0, false).await;
        let targets = [
            format!("{base}/hook"),
            format!("slack+{slack_base}/services/x"),
        ];
        let metrics = Arc::new(Metrics::new(None));
        let notifier = Notifier::start(
            settings(&targets, &[Kind::IpChanged, Kind::VerificationFailed]),
            Arc::clone(&metrics),
        )
        .expect("started");
        let (old, new) = (
            "203.0.113.1".parse().expect("ip"),
            "203.0.113.2".parse().expect("ip"),
        );
        notifier.event(Event::new(Kind::Whitelisted, "not chosen").about(Family::V4, new));
        notifier.event(Event::ip_changed(Family::V4, old, new));
        let got = until(&seen, 1).await;
        assert_eq!(got[0].0, "/hook");
        let body = &got[0].1;
        assert_eq!(body["event"], "ip_changed");
        assert_eq!(body["family"], "ipv4");
        assert_eq!(body["ip"], "203.0.113.2");
        assert_eq!(body["previous_ip"], "203.0.113.1");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("203.0.113.2"))
        );
        assert!(body["time"].as_str().is_some_and(|t| t.ends_with('Z')));
        assert!(body["host"].is_string());
        let slack = until(&slack_seen, 1).await;
        assert!(
            slack[0].1["text"]
                .as_str()
                .is_some_and(|t| t.contains("changed from 203.0.113.1"))
        );
        // The unchosen event went nowhere.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(lock(&seen).len(), 1);
        assert_eq!(notifier.status()[0].delivered, 1);
        let text = metrics.encode();
        assert!(
            text.contains("notify_deliveries_total{target=\"http://127.0.0.1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_receiver_that_fails_three_times_gets_the_event_once() {
        let (base, seen) = receiver(3, false).await;
        let notifier = Notifier::start(
            settings(&[base], &[Kind::IpChanged]),
            Arc::new(Metrics::new(None)),
        )
        .expect("started");
        let ip = "203.0.113.2".parse().expect("ip");
        notifier.event(Event::ip_changed(Family::V4, ip, ip));
        let got = until(&seen, 4).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            lock(&seen).len(),
            4,
            "three refusals, one acceptance, no more"
        );
        assert!(got.iter().all(|(_, body)| body["event"] == "ip_changed"));
        let status = &notifier.status()[0];
        assert_eq!((status.delivered, status.failed, status.up), (1, 0, true));
    }

    #[tokio::test]
    async fn a_hanging_receiver_blocks_nothing_and_a_full_queue_drops() {
        let (base, _) = receiver(0, true).await;
        let metrics = Arc::new(Metrics::new(None));
        let notifier = Notifier::start(settings(&[base], &[Kind::IpChanged]), Arc::clone(&metrics))
            .expect("started");
        let ip = "203.0.113.2".parse().expect("ip");
        let started = std::time::Instant::now();
        for _ in 0..200 {
            notifier.event(Event::ip_changed(Family::V4, ip, ip));
            notifier.readiness(true, "ready");
        }
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "{:?}",
            started.elapsed()
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while notifier.status()[0].dropped == 0 {
            assert!(std::time::Instant::now() < deadline, "nothing was dropped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(metrics.encode().contains("outcome=\"dropped\""));
    }

    #[tokio::test]
    async fn not_ready_for_then_recovered() {
        let (base, seen) = receiver(0, false).await;
        let notifier = Notifier::start(
            settings(&[base], &[Kind::NotReadyFor, Kind::Recovered]),
            Arc::new(Metrics::new(None)),
        )
        .expect("started");
        notifier.readiness(false, "ipv4: 203.0.113.2 not verified yet");
        let got = until(&seen, 1).await;
        assert_eq!(got[0].1["event"], "not_ready_for");
        assert!(
            got[0].1["message"]
                .as_str()
                .is_some_and(|m| m.contains("not verified yet"))
        );
        notifier.readiness(true, "ready: ipv4 203.0.113.2 whitelisted and verified");
        let got = until(&seen, 2).await;
        assert_eq!(got[1].1["event"], "recovered");
        assert!(got[1].1["not_ready_seconds"].is_u64());
        // A short unready spell after that says nothing.
        notifier.readiness(false, "again");
        notifier.readiness(true, "ready");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(lock(&seen).len(), 2);
    }

    #[tokio::test]
    async fn heartbeats_follow_the_rounds() {
        let (base, seen) = receiver(0, false).await;
        let mut settings = settings(&[], &[]);
        settings.heartbeat = Some(Heartbeat::parse(&format!("{base}/ping/uuid")).expect("hc"));
        let notifier = Notifier::start(settings, Arc::new(Metrics::new(None))).expect("started");
        notifier.round(true);
        until(&seen, 1).await;
        notifier.round(false);
        let got = until(&seen, 2).await;
        assert_eq!(got[0].0, "/ping/uuid");
        assert_eq!(got[1].0, "/ping/uuid/fail");
    }

    #[tokio::test]
    async fn notify_test_reports_each_target() {
        let (good, seen) = receiver(0, false).await;
        let (bad, _) = receiver(99, false).await;
        let mut settings = settings(&[good, bad], &[]);
        settings.attempts = 2;
        let results = test_all(&settings).await;
        assert!(results[0].1.is_ok());
        assert_eq!(results[1].1, Err("HTTP 503".to_owned()));
        assert_eq!(lock(&seen)[0].1["event"], "test");
    }
}
