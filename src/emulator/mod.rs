//! Offline stand-in for the sendSMS JSON API (keys, whitelists, faults), for demos, tests and users' CI.

pub(crate) mod args;
pub(crate) mod dns;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Value, json};

/// How `token_list_ips` shapes its `details`: the real shape is unpublished, so clients are
/// tested against each plausible one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// `["1.2.3.4", ...]`
    #[default]
    Strings,
    /// `[{"ip": "1.2.3.4", "id": 1}, ...]`
    Objects,
    /// `{"1.2.3.4": "added", ...}`
    Map,
    /// `"1.2.3.4,5.6.7.8"`
    Csv,
}

/// What a request hit by `--fail-rate` gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// HTTP 502 or a dropped connection, half and half.
    #[default]
    Mixed,
    /// HTTP 502 with an HTML body.
    Http502,
    /// The connection drops in the middle of the answer.
    Drop,
    /// No answer at all, ever.
    Hang,
    /// A JSON answer cut short.
    MalformedJson,
    /// A 10 MiB answer.
    HugeBody,
    /// A status code no source documents (-1024).
    UnknownStatus,
}

/// The two kinds of API key the provider offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// Works only from the peer addresses on its whitelist.
    Default,
    /// Works from anywhere.
    Cloud,
}

/// Everything the emulator models; each unknown of the real API is a setting.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The account's user name.
    pub username: String,
    /// The account's password (token actions need an API key instead).
    pub password: String,
    /// In the order given on the command line; `/_emulator/state` reports them in this order.
    pub keys: Vec<(KeyKind, String)>,
    /// Addresses pre-whitelisted on every default key.
    pub allow: Vec<IpAddr>,
    /// Added delay before each answer (API, `/ip` echo, DNS whoami).
    pub latency: Duration,
    /// An added IP takes effect only after this.
    pub propagation_delay: Duration,
    /// Status answered when `token_add_ip` names a listed IP.
    pub duplicate_status: i64,
    /// Unbilled requests per window per account; 0 turns the limit off.
    pub rate_limit: u32,
    /// Status answered when the rate limit is hit.
    pub rate_limit_status: i64,
    /// Length of the rate-limit window.
    pub rate_window: Duration,
    /// Chance (0 to 1) of a transient fault per API request.
    pub fail_rate: f64,
    /// What a request hit by `fail_rate` gets.
    pub fault: Fault,
    /// Every API request is answered as rate-limited for this long after start.
    pub rate_limited_for: Duration,
    /// Shape of `token_list_ips` details.
    pub list_format: ListFormat,
    /// Every accepted send is recorded, then its connection is dropped without an answer.
    pub drop_after_send: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            username: "demo".into(),
            password: "demo-account-password".into(),
            keys: Vec::new(),
            allow: Vec::new(),
            latency: Duration::ZERO,
            propagation_delay: Duration::ZERO,
            duplicate_status: -512,
            rate_limit: 10,
            rate_limit_status: -4096,
            rate_window: Duration::from_secs(60),
            fail_rate: 0.0,
            fault: Fault::Mixed,
            rate_limited_for: Duration::ZERO,
            list_format: ListFormat::Strings,
            drop_after_send: false,
        }
    }
}

/// The message log keeps at most this many sends (the oldest go first); `messages_total`
/// counts them all.
const MESSAGE_LOG: usize = 100_000;

/// What one send cost, taken off the account's balance.
const PRICE: f64 = 0.05;

/// One accepted send, as `/_emulator/state` shows it.
#[derive(Clone, Debug, serde::Serialize)]
struct Message {
    id: String,
    action: String,
    to: String,
    text: String,
    peer: IpAddr,
    /// What the credentials matched, never what they were.
    credentials: Value,
}

/// Where a peer's traffic seems to come from: a NAT gateway in front of the host, whose public
/// address a test or the demo changes (`POST /_emulator/egress`), as the host never sees it.
#[derive(Default)]
pub(crate) struct Nat(Mutex<BTreeMap<IpAddr, IpAddr>>);

impl Nat {
    pub(crate) fn seen(&self, peer: IpAddr) -> IpAddr {
        let peer = peer.to_canonical();
        crate::util::lock(&self.0)
            .get(&peer)
            .copied()
            .unwrap_or(peer)
    }
}

#[derive(Clone, Copy, Default, serde::Serialize)]
struct Counts {
    accepted: u64,
    refused: u64,
}

struct Listed {
    ip: IpAddr,
    effective_at: Instant,
}

struct Key {
    kind: KeyKind,
    secret: String,
    whitelist: Vec<Listed>,
    requests: BTreeMap<String, Counts>,
}

impl Key {
    fn effective(&self, now: Instant) -> impl Iterator<Item = IpAddr> + '_ {
        self.whitelist
            .iter()
            .filter(move |l| l.effective_at <= now)
            .map(|l| l.ip)
    }

    fn count(&mut self, action: &str, accepted: bool) {
        let counts = self.requests.entry(action.to_owned()).or_default();
        if accepted {
            counts.accepted += 1;
        } else {
            counts.refused += 1;
        }
    }
}

struct Account {
    keys: Vec<Key>,
    recent: VecDeque<Instant>,
    unmatched: u64,
    rate_limited: u64,
    messages: VecDeque<Message>,
    messages_total: u64,
    balance: f64,
}

struct Emulator {
    settings: Settings,
    started: Instant,
    account: Mutex<Account>,
    nat: Arc<Nat>,
}

impl Emulator {
    fn account(&self) -> MutexGuard<'_, Account> {
        crate::util::lock(&self.account)
    }
}

/// A running emulator; dropping it does not stop it, `shutdown` does.
pub struct RunningEmulator {
    /// The HTTP address it listens on.
    pub addr: SocketAddr,
    /// The DNS whoami's address, when one was asked for.
    pub dns_addr: Option<SocketAddr>,
    emulator: Arc<Emulator>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    dns_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningEmulator {
    /// What `/_emulator/state` answers.
    pub fn state(&self) -> Value {
        snapshot(&self.emulator)
    }

    /// Traffic from `from` is seen as coming from `to`, as behind a NAT gateway whose public
    /// address changed (`POST /_emulator/egress`).
    pub fn translate(&self, from: IpAddr, to: IpAddr) {
        self.emulator.translate(from, to);
    }

    /// Runs until the HTTP or the DNS server fails.
    pub async fn wait(self) -> std::io::Result<()> {
        let dns = async {
            match self.dns_task {
                Some(task) => task.await.map_err(std::io::Error::other)?,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            http = self.task => http.map_err(std::io::Error::other)?,
            dns = dns => dns,
        }
    }

    /// Stops both servers.
    pub fn shutdown(&self) {
        self.task.abort();
        if let Some(task) = &self.dns_task {
            task.abort();
        }
    }
}

/// Starts the emulator on `listen` (HTTP) and, when given, `dns_listen` (UDP DNS whoami).
pub async fn start(
    listen: SocketAddr,
    dns_listen: Option<SocketAddr>,
    settings: Settings,
) -> std::io::Result<RunningEmulator> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let nat = Arc::new(Nat::default());
    let (dns_addr, dns_task) = match dns_listen {
        Some(dns_listen) => {
            let socket = tokio::net::UdpSocket::bind(dns_listen).await?;
            (
                Some(socket.local_addr()?),
                Some(tokio::spawn(dns::serve(
                    socket,
                    settings.latency,
                    Arc::clone(&nat),
                ))),
            )
        }
        None => (None, None),
    };
    let now = Instant::now();
    let keys = settings
        .keys
        .iter()
        .map(|(kind, secret)| Key {
            kind: *kind,
            secret: secret.clone(),
            whitelist: match kind {
                KeyKind::Default => settings
                    .allow
                    .iter()
                    .map(|&ip| Listed {
                        ip,
                        effective_at: now,
                    })
                    .collect(),
                KeyKind::Cloud => Vec::new(),
            },
            requests: BTreeMap::new(),
        })
        .collect();
    let emulator = Arc::new(Emulator {
        started: now,
        settings,
        account: Mutex::new(Account {
            keys,
            recent: VecDeque::new(),
            unmatched: 0,
            rate_limited: 0,
            messages: VecDeque::new(),
            messages_total: 0,
            balance: 100.0,
        }),
        nat,
    });
    let app = Router::new()
        .route("/json", any(api))
        .route("/ip", get(echo_ip))
        .route("/_emulator/state", get(state))
        .route("/_emulator/remove-ip", post(remove_ip))
        .route("/_emulator/egress", post(egress))
        .with_state(Arc::clone(&emulator));
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    Ok(RunningEmulator {
        addr,
        dns_addr,
        emulator,
        task,
        dns_task,
    })
}

/// `--latency` holds every answer a client waits for (API, echo, DNS), so a benchmark sees one
/// round trip per request as a real network would give it.
async fn delay(latency: Duration) {
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
}

async fn echo_ip(
    State(emulator): State<Arc<Emulator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> Response {
    delay(emulator.settings.latency).await;
    (
        [(header::CONTENT_TYPE, "text/plain")],
        format!("{}\n", emulator.nat.seen(peer.ip())),
    )
        .into_response()
}

/// The API answers HTTP 200 with JSON labelled as HTML, whatever happened.
fn answer(status: i64, message: &str, details: Value) -> Response {
    answer_text(json!({"status": status, "message": message, "details": details}).to_string())
}

fn answer_text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=UTF-8")], body).into_response()
}

/// A body that fails at once, so the client sees the connection drop mid-answer.
struct Severed;

impl http_body::Body for Severed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        Poll::Ready(Some(Err(std::io::Error::other(
            "connection severed by the emulator",
        ))))
    }
}

async fn injected_fault(fault: Fault) -> Response {
    let fault = match fault {
        Fault::Mixed if rand::random_bool(0.5) => Fault::Http502,
        Fault::Mixed => Fault::Drop,
        other => other,
    };
    match fault {
        Fault::Hang => std::future::pending().await,
        Fault::MalformedJson => {
            answer_text(r#"{"status": 0, "message": "OK", "details": ["#.to_owned())
        }
        Fault::HugeBody => {
            let mut body = String::with_capacity(10 * 1024 * 1024 + 64);
            body.push_str(r#"{"status":0,"message":"OK","details":["#);
            while body.len() < 10 * 1024 * 1024 {
                body.push_str(r#""203.0.113.1","#);
            }
            body.push_str(r#""203.0.113.2"]}"#);
            answer_text(body)
        }
        Fault::UnknownStatus => answer(-1024, "Unknown condition", Value::Null),
        Fault::Http502 => (
            StatusCode::BAD_GATEWAY,
            "<html><body>502 Bad Gateway</body></html>",
        )
            .into_response(),
        Fault::Drop | Fault::Mixed => severed(),
    }
}

/// The connection drops in the middle of the answer.
fn severed() -> Response {
    let mut response = Response::new(Body::new(Severed));
    response.headers_mut().insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from_static("64"),
    );
    response
}

fn form_params(query: Option<&str>, body: &[u8]) -> BTreeMap<String, String> {
    let mut params: BTreeMap<String, String> =
        url::form_urlencoded::parse(body).into_owned().collect();
    if let Some(query) = query {
        params.extend(url::form_urlencoded::parse(query.as_bytes()).into_owned());
    }
    params
}

async fn api(
    State(emulator): State<Arc<Emulator>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let settings = &emulator.settings;
    delay(settings.latency).await;
    if settings.fail_rate > 0.0 && rand::random_bool(settings.fail_rate.min(1.0)) {
        return injected_fault(settings.fault).await;
    }
    if emulator.started.elapsed() < settings.rate_limited_for {
        emulator.account().rate_limited += 1;
        return answer(
            settings.rate_limit_status,
            "Too many requests, slow down",
            Value::Null,
        );
    }
    let params = form_params(query.as_deref(), &body);
    let answer = handle(&emulator, emulator.nat.seen(peer.ip()), &params);
    if settings.drop_after_send && answer.sent {
        // Recorded, and then no answer: the caller cannot know whether it was sent.
        return severed();
    }
    answer.response
}

/// An answer, and whether it recorded a send.
struct Handled {
    response: Response,
    sent: bool,
}

impl From<Response> for Handled {
    fn from(response: Response) -> Self {
        Handled {
            response,
            sent: false,
        }
    }
}

/// Actions that send and bill: never rate limited, as the provider limits unbilled queries only.
const BILLED: [&str; 2] = ["message_send", "message_send_gdpr"];
const KNOWN: [&str; 6] = [
    "token_add_ip",
    "token_list_ips",
    "message_send",
    "message_send_gdpr",
    "message_status",
    "user_get_balance",
];

fn handle(emulator: &Emulator, peer: IpAddr, params: &BTreeMap<String, String>) -> Handled {
    let settings = &emulator.settings;
    let now = Instant::now();
    let mut account = emulator.account();
    let action = params.get("action").map(String::as_str).unwrap_or("");

    if settings.rate_limit > 0 && !BILLED.contains(&action) {
        while account
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= settings.rate_window)
        {
            account.recent.pop_front();
        }
        if account.recent.len() >= settings.rate_limit as usize {
            account.rate_limited += 1;
            return answer(
                settings.rate_limit_status,
                "Too many requests, slow down",
                Value::Null,
            )
            .into();
        }
        account.recent.push_back(now);
    }

    if action.is_empty() {
        return answer(-1, "No action was given", Value::Null).into();
    }
    let (Some(username), Some(password)) = (params.get("username"), params.get("password")) else {
        return answer(
            -4,
            "Missing parameter: username and password are required",
            Value::Null,
        )
        .into();
    };
    if !KNOWN.contains(&action) {
        return answer(-2, "No such action", Value::Null).into();
    }
    if *username != settings.username {
        account.unmatched += 1;
        return answer(-8, "Authentication failed", Value::Null).into();
    }
    let key_index = account.keys.iter().position(|k| k.secret == *password);
    let Some(index) = key_index else {
        // The account password works for everything but the token actions, from anywhere.
        if *password == settings.password && !action.starts_with("token_") {
            return account_action(&mut account, action, peer, params, "account password");
        }
        account.unmatched += 1;
        let message = if *password == settings.password {
            "Token actions need an API key as password"
        } else {
            "Authentication failed"
        };
        return answer(-8, message, Value::Null).into();
    };
    let key = &mut account.keys[index];
    if key.kind == KeyKind::Default && !key.effective(now).any(|ip| ip == peer) {
        key.count(action, false);
        return answer(
            -8,
            "Authentication failed: IP address not authorized for this API key",
            Value::Null,
        )
        .into();
    }
    match action {
        "token_add_ip" => {
            let Some(text) = params.get("ipaddr") else {
                key.count(action, false);
                return answer(-4, "Missing parameter: ipaddr", Value::Null).into();
            };
            let Ok(ip) = text.trim().parse::<IpAddr>() else {
                key.count(action, false);
                return answer(-128, "Invalid IP address", Value::Null).into();
            };
            key.count(action, true);
            let ip = ip.to_canonical();
            if key.whitelist.iter().any(|l| l.ip == ip) {
                return answer(
                    settings.duplicate_status,
                    "IP address already whitelisted",
                    Value::Null,
                )
                .into();
            }
            key.whitelist.push(Listed {
                ip,
                effective_at: now + settings.propagation_delay,
            });
            answer(0, "IP address added", Value::Null).into()
        }
        "token_list_ips" => {
            key.count(action, true);
            let ips: Vec<String> = key.effective(now).map(|ip| ip.to_string()).collect();
            let details = match settings.list_format {
                ListFormat::Strings => json!(ips),
                ListFormat::Objects => Value::Array(
                    ips.iter()
                        .enumerate()
                        .map(|(i, ip)| json!({"id": i + 1, "ip": ip}))
                        .collect(),
                ),
                ListFormat::Map => {
                    Value::Object(ips.iter().map(|ip| (ip.clone(), json!("added"))).collect())
                }
                ListFormat::Csv => json!(ips.join(",")),
            };
            answer(0, "OK", details).into()
        }
        _ => {
            key.count(action, true);
            let matched = format!("key {index}");
            account_action(&mut account, action, peer, params, &matched)
        }
    }
}

/// The actions of an authenticated account: sending, and reading what was sent.
fn account_action(
    account: &mut Account,
    action: &str,
    peer: IpAddr,
    params: &BTreeMap<String, String>,
    matched: &str,
) -> Handled {
    match action {
        "message_send" | "message_send_gdpr" => {
            let (Some(to), Some(text)) = (params.get("to"), params.get("text")) else {
                return answer(
                    -4,
                    "Missing parameter: to and text are required",
                    Value::Null,
                )
                .into();
            };
            account.messages_total += 1;
            let id = format!("{:016x}", account.messages_total);
            account.balance -= PRICE;
            if account.messages.len() >= MESSAGE_LOG {
                account.messages.pop_front();
            }
            account.messages.push_back(Message {
                id: id.clone(),
                action: action.to_owned(),
                to: to.clone(),
                text: text.clone(),
                peer,
                credentials: json!({"username": "matched", "password": matched}),
            });
            Handled {
                response: answer(1, "Message sent", json!(id)),
                sent: true,
            }
        }
        "message_status" => {
            let Some(id) = params.get("id") else {
                return answer(-4, "Missing parameter: id", Value::Null).into();
            };
            match account.messages.iter().find(|m| m.id == *id) {
                Some(message) => answer(
                    0,
                    "OK",
                    json!({"id": message.id, "status": "delivered", "to": message.to}),
                )
                .into(),
                None => answer(-128, "No such message", Value::Null).into(),
            }
        }
        "user_get_balance" => {
            answer(0, "OK", json!((account.balance * 100.0).round() / 100.0)).into()
        }
        _ => answer(-2, "No such action", Value::Null).into(),
    }
}

async fn state(State(emulator): State<Arc<Emulator>>) -> Response {
    axum::Json(snapshot(&emulator)).into_response()
}

fn snapshot(emulator: &Emulator) -> Value {
    let now = Instant::now();
    let account = emulator.account();
    let keys: Vec<Value> = account
        .keys
        .iter()
        .enumerate()
        .map(|(index, key)| {
            json!({
                "index": index,
                "kind": key.kind,
                "whitelist": key.effective(now).map(|ip| ip.to_string()).collect::<Vec<_>>(),
                "pending": key.whitelist.iter().filter(|l| l.effective_at > now).map(|l| l.ip.to_string()).collect::<Vec<_>>(),
                "requests": key.requests,
            })
        })
        .collect();
    json!({
        "keys": keys,
        "unmatched_requests": account.unmatched,
        "rate_limited_requests": account.rate_limited,
        "messages": account.messages,
        "messages_total": account.messages_total,
    })
}

fn ip_param(params: &BTreeMap<String, String>, name: &str) -> Option<IpAddr> {
    params.get(name).and_then(|v| v.parse().ok())
}

/// What a NAT gateway in front of the host does when its public address changes: traffic from
/// `from` is seen as coming from `to` (`to` equal to `from` undoes it).
async fn egress(
    State(emulator): State<Arc<Emulator>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let params = form_params(query.as_deref(), &body);
    let (Some(from), Some(to)) = (ip_param(&params, "from"), ip_param(&params, "to")) else {
        return (
            StatusCode::BAD_REQUEST,
            "need from=ADDRESS and to=ADDRESS\n",
        )
            .into_response();
    };
    emulator.translate(from, to);
    axum::Json(json!({"from": from, "to": to})).into_response()
}

impl Emulator {
    fn translate(&self, from: IpAddr, to: IpAddr) {
        let (from, to) = (from.to_canonical(), to.to_canonical());
        let mut nat = crate::util::lock(&self.nat.0);
        if from == to {
            nat.remove(&from);
        } else {
            nat.insert(from, to);
        }
    }
}

/// What a person does in the web UI: take an address off a key (the API has no such action).
async fn remove_ip(
    State(emulator): State<Arc<Emulator>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let params = form_params(query.as_deref(), &body);
    let key = params.get("key").and_then(|k| k.parse::<usize>().ok());
    let (Some(key), Some(ip)) = (key, ip_param(&params, "ip")) else {
        return (StatusCode::BAD_REQUEST, "need key=INDEX and ip=ADDRESS\n").into_response();
    };
    let mut account = emulator.account();
    let Some(key) = account.keys.get_mut(key) else {
        return (StatusCode::NOT_FOUND, "no such key index\n").into_response();
    };
    let before = key.whitelist.len();
    key.whitelist.retain(|l| l.ip != ip.to_canonical());
    axum::Json(json!({"removed": before - key.whitelist.len()})).into_response()
}
