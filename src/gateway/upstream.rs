//! The gateway's client of the API: the direct route with the sidecar's credentials, on connections it watches, with fresh ones after an egress change.

use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{self, Extensions, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{
    CaptureConnection, Connected, Connection, capture_connection,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpSocket;
use tokio::sync::watch;

use super::call::Call;
use super::conn::{ConnState, Registry, Tracked};
use super::forward::{Answer, Failure, Upstream};
use crate::http as hardened;
use crate::net::Family;
use crate::netwatch::Addresses;
use crate::secret::Credentials;
use crate::sendsms;
use crate::status::Readiness;

/// Answers larger than this are not passed on (a message list can be long; a whitelist is small).
pub(crate) const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// Below the keep-alive timeouts of common servers and load balancers (60 s and more), so the
/// server does not close a connection just as a request is written on it.
const POOL_IDLE: Duration = Duration::from_secs(55);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Opens the connections: resolve, connect pinned to one family, register, TLS.
#[derive(Clone)]
struct Connector {
    inner: Arc<ConnectorInner>,
}

struct ConnectorInner {
    family: Family,
    timeout: Duration,
    tls: tokio_rustls::TlsConnector,
    registry: Arc<Registry>,
    resolver: OnceLock<Option<hickory_resolver::TokioResolver>>,
}

impl ConnectorInner {
    async fn addresses(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, BoxError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let resolver = self
            .resolver
            .get_or_init(|| {
                hickory_resolver::Resolver::builder_tokio()
                    .ok()?
                    .build()
                    .ok()
            })
            .as_ref()
            .ok_or("the system's DNS configuration cannot be read")?;
        let found = resolver.lookup_ip(host).await?;
        Ok(found.iter().map(|ip| SocketAddr::new(ip, port)).collect())
    }

    async fn connect(&self, uri: Uri) -> Result<TokioIo<Conn>, BoxError> {
        let host = uri.host().ok_or("the API URL has no host")?.to_owned();
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let candidates: Vec<SocketAddr> = self
            .addresses(&host, port)
            .await?
            .into_iter()
            .filter(|a| Family::of(a.ip()) == self.family)
            .collect();
        let mut last: BoxError = format!("{host} has no {} address", self.family).into();
        for addr in candidates {
            let socket = match self.family {
                Family::V4 => TcpSocket::new_v4()?,
                Family::V6 => TcpSocket::new_v6()?,
            };
            match tokio::time::timeout(self.timeout, socket.connect(addr)).await {
                Ok(Ok(stream)) => {
                    stream.set_nodelay(true)?;
                    let state = self.registry.register(stream.local_addr()?.ip());
                    let tracked = Tracked::new(stream, Arc::clone(&state));
                    if !https {
                        return Ok(TokioIo::new(Conn::Plain(tracked, state)));
                    }
                    let name = rustls::pki_types::ServerName::try_from(host.clone())?;
                    let tls = self.tls.connect(name, tracked).await?;
                    return Ok(TokioIo::new(Conn::Tls(Box::new(tls), state)));
                }
                Ok(Err(e)) => last = e.into(),
                Err(_) => last = format!("connecting to {addr} timed out").into(),
            }
        }
        Err(last)
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<Conn>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.connect(uri).await })
    }
}

/// One connection, plain or TLS, over a watched TCP stream.
enum Conn {
    Plain(Tracked, Arc<ConnState>),
    Tls(
        Box<tokio_rustls::client::TlsStream<Tracked>>,
        Arc<ConnState>,
    ),
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        let (Conn::Plain(_, state) | Conn::Tls(_, state)) = self;
        Connected::new().extra(Arc::clone(state))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s, _) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s, _) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The API over the direct route, as the gateway calls it.
pub(crate) struct Api {
    connector: Connector,
    client: RwLock<Client<Connector, Full<Bytes>>>,
    /// The endpoint without a query, such as `https://api.sendsms.ro/json`.
    endpoint: String,
    /// `username=...&password=...`, encoded once.
    credentials: SecretString,
    timeout: Duration,
}

impl Api {
    /// The direct route over `family` (the first one the sidecar follows): never the bootstrap
    /// path, which is only for `token_add_ip`.
    pub(crate) fn new(
        settings: &sendsms::Settings,
        credentials: &Credentials,
        family: Family,
    ) -> Self {
        let connector = Connector {
            inner: Arc::new(ConnectorInner {
                family,
                timeout: settings.request_timeout,
                tls: tokio_rustls::TlsConnector::from(hardened::tls_config(&settings.extra_roots)),
                registry: Arc::new(Registry::default()),
                resolver: OnceLock::new(),
            }),
        };
        let mut endpoint = settings.url.clone();
        endpoint.set_query(None);
        let encoded = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("username", &credentials.username)
            .append_pair("password", credentials.api_key.expose_secret())
            .finish();
        Api {
            client: RwLock::new(Self::client(&connector)),
            connector,
            endpoint: endpoint.to_string(),
            credentials: SecretString::from(encoded),
            timeout: settings.request_timeout,
        }
    }

    /// A client with an empty pool: keep-alive, no redirects (hyper follows none), no proxy.
    fn client(connector: &Connector) -> Client<Connector, Full<Bytes>> {
        Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_timer(TokioTimer::new())
            .build(connector.clone())
    }

    /// Fresh connections from now on: after an egress change, one kept alive from before could
    /// go out through a NAT mapping that no longer exists.
    pub(crate) fn renew(&self) {
        let fresh = Self::client(&self.connector);
        *self
            .client
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
    }

    /// Cuts connections from addresses the host lost, and renews the pool after an egress
    /// change the control loop saw, until the process ends.
    pub(crate) async fn follow(
        self: Arc<Self>,
        mut addresses: Option<watch::Receiver<Addresses>>,
        mut readiness: watch::Receiver<Readiness>,
    ) {
        let registry = Arc::clone(&self.connector.inner.registry);
        if let Some(addresses) = &mut addresses {
            registry.addresses_changed(addresses.borrow_and_update().clone());
        }
        let mut changes = readiness.borrow_and_update().changes;
        loop {
            let announced = async {
                match &mut addresses {
                    Some(receiver) => receiver.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                alive = announced => {
                    if !alive {
                        addresses = None;
                        continue;
                    }
                    let now = addresses.as_mut().map(|a| a.borrow_and_update().clone());
                    if let Some(now) = now {
                        let cut = registry.addresses_changed(now);
                        if cut > 0 {
                            tracing::info!(connections = cut, "a local address is gone: its connections to the API are cut");
                        }
                    }
                }
                alive = readiness.changed() => {
                    if alive.is_err() {
                        return;
                    }
                    let now = readiness.borrow_and_update().changes;
                    if now != changes {
                        changes = now;
                        self.renew();
                    }
                }
            }
        }
    }

    fn request(&self, call: &Call) -> Result<Request<Full<Bytes>>, String> {
        let mut target = url::form_urlencoded::Serializer::new(format!("{}?", self.endpoint));
        target.extend_pairs(&call.query);
        let mut target = target.finish();
        if !call.query.is_empty() {
            target.push('&');
        }
        target.push_str(self.credentials.expose_secret());
        let uri =
            Uri::try_from(target).map_err(|_| "the API URL cannot carry this call".to_owned())?;
        let builder = Request::builder()
            .uri(uri)
            .header(header::USER_AGENT, USER_AGENT);
        let request = match &call.form {
            None => builder.method(Method::GET).body(Full::default()),
            Some(form) => {
                let body = url::form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(form)
                    .finish();
                builder
                    .method(Method::POST)
                    .header(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/x-www-form-urlencoded"),
                    )
                    .body(Full::from(body))
            }
        };
        request.map_err(|_| "the call cannot be written as a request".to_owned())
    }

    async fn exchange(&self, call: &Call) -> Result<Answer, Failure> {
        let mut request = self.request(call).map_err(Failure::NeverLeft)?;
        let captured = capture_connection(&mut request);
        let client = self
            .client
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let exchange = async {
            let response = client
                .request(request)
                .await
                .map_err(|e| (e.is_connect(), describe(&e)))?;
            let http_status = response.status().as_u16();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    (
                        false,
                        format!("the answer could not be read: {}", chain(&*e)),
                    )
                })?
                .to_bytes();
            Ok::<_, (bool, String)>(Answer::new(http_status, content_type, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err((connect, why))) => Err(classify(connect, why, &captured)),
            Err(_) => Err(classify(
                false,
                format!(
                    "no answer within {:?} (SENDSMS_REQUEST_TIMEOUT)",
                    self.timeout
                ),
                &captured,
            )),
        }
    }
}

const USER_AGENT: &str = concat!(
    "sendsms-whitelister/",
    env!("CARGO_PKG_VERSION"),
    " gateway"
);

/// Whether a failed request may have reached the API.
fn classify(connect: bool, why: String, captured: &CaptureConnection) -> Failure {
    if connect {
        return Failure::NeverLeft(why);
    }
    let state = captured
        .connection_metadata()
        .as_ref()
        .and_then(|connected| {
            let mut extensions = Extensions::new();
            connected.get_extras(&mut extensions);
            extensions.get::<Arc<ConnState>>().cloned()
        });
    match state {
        None => Failure::NeverLeft(format!("{why} (before any connection was made)")),
        Some(state) if state.request_never_left() => Failure::NeverLeft(why),
        Some(_) => Failure::Unknown(why),
    }
}

/// An error and its causes, as text; hyper's errors carry no URL, so no key.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

fn describe(error: &hyper_util::client::legacy::Error) -> String {
    match error.source() {
        Some(cause) => chain(cause),
        None => error.to_string(),
    }
}

impl Upstream for Api {
    fn send<'a>(
        &'a self,
        call: &'a Call,
    ) -> Pin<Box<dyn Future<Output = Result<Answer, Failure>> + Send + 'a>> {
        Box::pin(self.exchange(call))
    }
}
