//! The hardened listener every server uses: bounded headers, bodies, time and connections, with a liveness lane.
//!
//! Each accepted connection is admitted to one of two lanes, or closed at once:
//!
//! - **main**: the router, for at most `max_connections` connections at once, at most
//!   `max_remote` of them from non-loopback addresses together (other pods cannot take the
//!   pod's own share, nor more memory than that many buffers) and at most `max_per_peer` from
//!   one non-loopback address (one pod cannot take them all);
//! - **liveness**: when the main lane is full, a peer that holds no main-lane connection (a
//!   kubelet probe, not a flooder) gets one short connection that only answers the liveness
//!   router (`/healthz`), with a one-second header timeout and no keep-alive; one at a time
//!   per address, so a few flooding addresses cannot fill it. A peer that already holds
//!   main-lane connections is what is filling them, and is closed instead (loopback peers,
//!   the pod itself, may always try it).
//!
//! In both lanes hyper enforces the header read timeout (which also closes an idle kept-alive
//! connection: hyper starts it whenever it waits for a request head), the header size and
//! count, and its read buffer; a body limit bounds what a handler may read, and a write that
//! makes no progress for `write_timeout` (a peer that never reads its answer) ends the
//! connection. The cap is also kept below the process's descriptor limit, so a flood can never
//! leave the process unable to accept the probe that decides whether it lives.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceExt;

use crate::util::lock;

/// What one listener allows; `Limits::default()` is what every server gets unless it asks for more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    /// From the moment the server waits for a request head until the head is complete; also
    /// how long a kept-alive connection may stay idle.
    pub(crate) header_timeout: Duration,
    /// Request line and headers together.
    pub(crate) max_header_bytes: usize,
    pub(crate) max_headers: usize,
    /// What a handler may read of a request body.
    pub(crate) max_body_bytes: usize,
    /// Connections open at once in the main lane (lowered to fit the descriptor limit).
    pub(crate) max_connections: usize,
    /// Main-lane connections from all non-loopback addresses together (at most `max_connections`).
    pub(crate) max_remote: usize,
    /// Main-lane connections from one non-loopback address.
    pub(crate) max_per_peer: usize,
    /// A write that makes no progress for this long ends the connection.
    pub(crate) write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(5),
            max_header_bytes: 16 * 1024,
            max_headers: 64,
            max_body_bytes: 64 * 1024,
            max_connections: 512,
            max_remote: 512,
            max_per_peer: 64,
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// The liveness lane's own limits: short, small, one request per connection.
const LIVENESS_CONNECTIONS: usize = 32;
const LIVENESS_HEADER_TIMEOUT: Duration = Duration::from_secs(1);
/// hyper's smallest read buffer.
const LIVENESS_BUFFER: usize = 8192;
/// Descriptors kept free for everything else the process opens (API calls, the store, files).
const RESERVED_DESCRIPTORS: usize = 64;
/// Connections the kernel may queue before they are accepted: a flood of connections that are
/// closed at once must not crowd out a probe's handshake (tokio's default is 1,024; the kernel
/// caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;
/// After an accept error (out of descriptors, say), wait before accepting again instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Binds `addr` for a [`Server`], with a deep accept queue (`BACKLOG`).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// One server: its router, its limits and, optionally, the liveness router served when full.
pub(crate) struct Server {
    router: Router,
    liveness: Option<Router>,
    limits: Limits,
}

impl Server {
    pub(crate) fn new(router: Router) -> Self {
        Server {
            router,
            liveness: None,
            limits: Limits::default(),
        }
    }

    pub(crate) fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// What a full server still answers, to a peer that holds none of its connections.
    pub(crate) fn liveness(mut self, router: Router) -> Self {
        self.liveness = Some(router);
        self
    }

    pub(crate) async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let limits = self.limits;
        let cap = limits.max_connections.min(descriptor_budget()).max(1);
        if cap < limits.max_connections {
            tracing::info!(
                cap,
                "connection cap lowered to fit the open-file limit (ulimit -n)"
            );
        }
        let body_limit = axum::extract::DefaultBodyLimit::max(limits.max_body_bytes);
        let main = Lane {
            router: self.router.layer(body_limit),
            http: http1(limits.header_timeout, limits.max_header_bytes, limits),
            slots: Arc::new(Semaphore::new(cap)),
        };
        let liveness = self.liveness.map(|router| Lane {
            router: router.layer(axum::extract::DefaultBodyLimit::max(0)),
            http: {
                let mut http = http1(LIVENESS_HEADER_TIMEOUT, LIVENESS_BUFFER, limits);
                http.keep_alive(false);
                http
            },
            slots: Arc::new(Semaphore::new(LIVENESS_CONNECTIONS)),
        });
        let admission = Admission {
            main: Arc::clone(&main.slots),
            remote: Arc::new(Semaphore::new(limits.max_remote.min(cap))),
            max_per_peer: limits.max_per_peer,
            peers: Arc::new(Peers::default()),
            liveness: liveness.as_ref().map(|lane| Arc::clone(&lane.slots)),
            probing: Arc::new(Peers::default()),
        };
        let (stop, stopping) = watch::channel(false);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::debug!(error = %e, "accept failed; pausing");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            // Finished connections are reaped as we go, so the set stays as small as the cap.
            while connections.try_join_next().is_some() {}
            let (lane, slot) = match admission.admit(peer.ip().to_canonical()) {
                Some((Admitted::Main, slot)) => (&main, slot),
                Some((Admitted::Liveness, slot)) => match &liveness {
                    Some(lane) => (lane, slot),
                    None => continue,
                },
                // Closed unanswered: a full server spends nothing more on it.
                None => continue,
            };
            let _ = stream.set_nodelay(true);
            connections.spawn(lane.connection(
                stream,
                peer,
                limits.write_timeout,
                slot,
                stopping.clone(),
            ));
        }
        let _ = stop.send(true);
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

/// The hyper HTTP/1 settings of one lane.
fn http1(
    header_timeout: Duration,
    max_header_bytes: usize,
    limits: Limits,
) -> hyper::server::conn::http1::Builder {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(max_header_bytes)
        .max_headers(limits.max_headers)
        // The read buffer holds a head and body chunks; nothing grows past it.
        .max_buf_size(max_header_bytes.max(LIVENESS_BUFFER));
    http
}

struct Lane {
    router: Router,
    http: hyper::server::conn::http1::Builder,
    slots: Arc<Semaphore>,
}

impl Lane {
    /// Serves one connection; its slot (and its peer's count) is given back when it ends.
    fn connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        write_timeout: Duration,
        held: Slot,
        mut stopping: watch::Receiver<bool>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let router = self.router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().oneshot(request)
        });
        let connection = self.http.serve_connection(
            TokioIo::new(WriteTimeout::new(stream, write_timeout)),
            service,
        );
        async move {
            let _held = held;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stopping.wait_for(|stop| *stop) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Which lane a connection was admitted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Admitted {
    Main,
    Liveness,
}

/// What an admitted connection holds until it ends: its lane's slot, its share of the remote
/// slots when its peer is not on loopback, and its peer's count.
struct Slot {
    _lane: OwnedSemaphorePermit,
    _remote: Option<OwnedSemaphorePermit>,
    _peer: Ticket,
}

/// Who gets which lane: the counts the caps are checked against.
struct Admission {
    main: Arc<Semaphore>,
    remote: Arc<Semaphore>,
    max_per_peer: usize,
    peers: Arc<Peers>,
    liveness: Option<Arc<Semaphore>>,
    probing: Arc<Peers>,
}

impl Admission {
    /// The lane for a new connection from `peer_ip`, or None: close it.
    fn admit(&self, peer_ip: IpAddr) -> Option<(Admitted, Slot)> {
        let local = peer_ip.is_loopback();
        let held = self.peers.held(peer_ip);
        if !local && held >= self.max_per_peer {
            return None;
        }
        // For a remote peer the main lane is full once the remote slots are taken.
        let remote = if local {
            Some(None)
        } else {
            Arc::clone(&self.remote).try_acquire_owned().ok().map(Some)
        };
        let main = remote.and_then(|remote| {
            let lane = Arc::clone(&self.main).try_acquire_owned().ok()?;
            Some((lane, remote))
        });
        if let Some((lane, remote)) = main {
            let slot = Slot {
                _lane: lane,
                _remote: remote,
                _peer: self.peers.enter(peer_ip),
            };
            return Some((Admitted::Main, slot));
        }
        if (held > 0 && !local) || self.probing.held(peer_ip) > 0 {
            return None;
        }
        let lane = Arc::clone(self.liveness.as_ref()?)
            .try_acquire_owned()
            .ok()?;
        let slot = Slot {
            _lane: lane,
            _remote: None,
            _peer: self.probing.enter(peer_ip),
        };
        Some((Admitted::Liveness, slot))
    }
}

/// Connections per peer address in one lane.
#[derive(Default)]
struct Peers(Mutex<HashMap<IpAddr, usize>>);

impl Peers {
    fn held(&self, ip: IpAddr) -> usize {
        lock(&self.0).get(&ip).copied().unwrap_or(0)
    }

    fn enter(self: &Arc<Self>, ip: IpAddr) -> Ticket {
        *lock(&self.0).entry(ip).or_insert(0) += 1;
        Ticket {
            peers: Arc::clone(self),
            ip,
        }
    }
}

/// One connection of a peer in a lane, counted while it lives.
struct Ticket {
    peers: Arc<Peers>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut peers = lock(&self.peers.0);
        if let Some(count) = peers.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                peers.remove(&self.ip);
            }
        }
    }
}

/// The descriptors the cap may use: the soft open-file limit less a reserve.
fn descriptor_budget() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return usize::MAX;
    }
    usize::try_from(limit.rlim_cur)
        .unwrap_or(usize::MAX)
        .saturating_sub(RESERVED_DESCRIPTORS)
}

/// A stream whose writes fail once they have made no progress for `limit`: hyper has no write
/// timeout, and a peer that never reads would otherwise hold its connection forever.
struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteTimeout<S> {
    fn new(inner: S, limit: Duration) -> Self {
        WriteTimeout {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Called when the inner write is pending: starts the clock, or fails once it ran out.
    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let limit = self.limit;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(stalled.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer stopped reading",
        ))
    }

    fn progressed<T>(
        &mut self,
        poll: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(result) => {
                self.stalled = None;
                Poll::Ready(result)
            }
            Poll::Pending => self.check_stall(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(poll, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(poll, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(poll, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progressed(poll, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn start(limits: Limits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route("/status", axum::routing::get(|| async { "status" }));
        let liveness = Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .fallback(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE });
        let server = Server::new(router).limits(limits).liveness(liveness);
        tokio::spawn(server.serve(listener, std::future::pending()));
        addr
    }

    /// Sends `request` and reads until the server closes: (answer, how long it took).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, Duration) {
        let started = tokio::time::Instant::now();
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let _ =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
        (
            String::from_utf8_lossy(&answer).into_owned(),
            started.elapsed(),
        )
    }

    const GET: &[u8] = b"GET /status HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";

    #[test]
    fn remote_peers_share_their_own_cap_and_loopback_keeps_the_rest() {
        let admission = Admission {
            main: Arc::new(Semaphore::new(4)),
            remote: Arc::new(Semaphore::new(2)),
            max_per_peer: 2,
            peers: Arc::new(Peers::default()),
            liveness: Some(Arc::new(Semaphore::new(1))),
            probing: Arc::new(Peers::default()),
        };
        let ip = |text: &str| text.parse::<IpAddr>().expect("address");
        let (a, b, c, lo) = (
            ip("198.18.0.10"),
            ip("198.18.0.11"),
            ip("198.18.0.12"),
            ip("127.0.0.1"),
        );
        let lane = |peer| admission.admit(peer);
        let kind = |admitted: &Option<(Admitted, Slot)>| admitted.as_ref().map(|(lane, _)| *lane);
        let (first, second) = (lane(a), lane(b));
        assert_eq!(
            (kind(&first), kind(&second)),
            (Some(Admitted::Main), Some(Admitted::Main))
        );
        // The remote share is taken: a newcomer gets the liveness lane, a holder nothing.
        let probe = lane(c);
        assert_eq!(kind(&probe), Some(Admitted::Liveness));
        assert_eq!(kind(&lane(a)), None);
        // Loopback still has the main lane's other two slots, then only the liveness lane.
        let local = [lane(lo), lane(lo)];
        assert_eq!(local.each_ref().map(kind), [Some(Admitted::Main); 2]);
        assert_eq!(kind(&lane(lo)), None, "the liveness lane is taken");
        drop(probe);
        assert_eq!(kind(&lane(lo)), Some(Admitted::Liveness));
        // A remote slot given back is a remote peer's again.
        drop(first);
        assert_eq!(kind(&lane(c)), Some(Admitted::Main));
    }

    #[tokio::test]
    async fn half_sent_and_idle_connections_are_closed_at_the_header_timeout() {
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let addr = start(limits).await;
        let (answer, took) = exchange(addr, b"GET /status HTTP/1.1\r\nx-slow: ").await;
        assert!(took < Duration::from_secs(2), "open for {took:?}: {answer}");
        let (answer, took) = exchange(addr, b"").await;
        assert!(
            answer.is_empty() && took < Duration::from_secs(2),
            "idle for {took:?}"
        );
        let (answer, _) = exchange(addr, GET).await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("status"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn oversized_headers_are_refused() {
        let addr = start(Limits::default()).await;
        let big = format!(
            "GET /status HTTP/1.1\r\nx-big: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let (answer, _) = exchange(addr, big.as_bytes()).await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_full_server_still_answers_liveness_and_nothing_else() {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let addr = start(limits).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(TcpStream::connect(addr).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (answer, _) = exchange(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"),
            "{answer}"
        );
        let (answer, _) = exchange(addr, GET).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (answer, _) = exchange(addr, GET).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
