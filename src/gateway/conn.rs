//! The gateway's connections to the API, each watched: one whose local address is gone is cut at once, and a request it never sent is known as never sent.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::netwatch::Addresses;
use crate::util::lock;

/// What one connection did, shared by its socket wrapper, the registry and the error path.
///
/// HTTP/1 carries one request at a time, so the wrapper can tell requests apart without knowing
/// HTTP: the first write after the answer began (a read that returned data) starts a request.
#[derive(Debug)]
pub(crate) struct ConnState {
    local: IpAddr,
    /// Bytes the kernel accepted from us.
    written: AtomicU64,
    /// `written` when the current request started.
    request_start: AtomicU64,
    /// A read returned data since the last write: the next write starts a new request.
    answered: AtomicBool,
    /// The local address is gone: nothing can be sent from it or come back to it.
    gone: AtomicBool,
    /// The current request provably never left: nothing of it was written, or the kernel still
    /// held every byte of it when the address went.
    never_left: AtomicBool,
    /// The task driving the connection, woken when the address goes.
    waker: Mutex<Option<Waker>>,
}

impl ConnState {
    fn new(local: IpAddr) -> Self {
        ConnState {
            local,
            written: AtomicU64::new(0),
            request_start: AtomicU64::new(0),
            answered: AtomicBool::new(true),
            gone: AtomicBool::new(false),
            never_left: AtomicBool::new(false),
            waker: Mutex::new(None),
        }
    }

    /// True when the request that failed on this connection never left: it can be sent again.
    pub(crate) fn request_never_left(&self) -> bool {
        self.never_left.load(Ordering::SeqCst)
    }

    /// Bytes of the current request written so far; 0 between requests.
    fn request_bytes(&self) -> u64 {
        if self.answered.load(Ordering::SeqCst) {
            return 0;
        }
        self.written
            .load(Ordering::SeqCst)
            .saturating_sub(self.request_start.load(Ordering::SeqCst))
    }

    fn cut(&self) {
        self.gone.store(true, Ordering::SeqCst);
        if let Some(waker) = lock(&self.waker).take() {
            waker.wake();
        }
    }
}

/// Every live connection, and the host's addresses as last announced.
#[derive(Default)]
pub(crate) struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    /// None until the first announcement (or without route netlink): nothing is cut then.
    addresses: Option<Addresses>,
    live: Vec<Weak<ConnState>>,
}

impl Registry {
    /// A new connection from `local`; one from an address already gone is cut at once.
    pub(crate) fn register(&self, local: IpAddr) -> Arc<ConnState> {
        let state = Arc::new(ConnState::new(local.to_canonical()));
        let mut inner = lock(&self.inner);
        inner.live.retain(|weak| weak.strong_count() > 0);
        inner.live.push(Arc::downgrade(&state));
        if inner
            .addresses
            .as_ref()
            .is_some_and(|now| !now.contains(&state.local))
        {
            state.cut();
        }
        state
    }

    /// The host's addresses changed: every connection from an address it no longer has is cut.
    /// Returns how many were.
    pub(crate) fn addresses_changed(&self, now: Addresses) -> usize {
        let mut inner = lock(&self.inner);
        let mut cut = 0;
        for state in inner.live.iter().filter_map(Weak::upgrade) {
            if !now.contains(&state.local) && !state.gone.load(Ordering::SeqCst) {
                state.cut();
                cut += 1;
            }
        }
        inner.addresses = Some(now);
        cut
    }
}

/// A TCP stream that counts what it writes, and fails at once when its local address is gone.
pub(crate) struct Tracked {
    stream: TcpStream,
    state: Arc<ConnState>,
}

impl Tracked {
    pub(crate) fn new(stream: TcpStream, state: Arc<ConnState>) -> Self {
        Tracked { stream, state }
    }

    fn remember(&self, cx: &Context<'_>) {
        let mut waker = lock(&self.state.waker);
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
    }

    /// The address is gone: decides whether the current request left, and makes sure that
    /// what did not leave never will.
    fn gone(&self) -> io::Error {
        let state = &self.state;
        if !state.never_left.load(Ordering::SeqCst) {
            let pending = state.request_bytes();
            let unsent = if pending == 0 {
                None
            } else {
                unsent_bytes(self.stream.as_raw_fd())
            };
            let never_left = pending == 0 && !state.answered.load(Ordering::SeqCst)
                || unsent.is_some_and(|unsent| unsent >= pending);
            if never_left {
                // A close with data still queued would try to send it later: reset instead.
                let _ = socket2::SockRef::from(&self.stream)
                    .set_linger(Some(std::time::Duration::ZERO));
                state.never_left.store(true, Ordering::SeqCst);
            }
        }
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the local address {} is gone", state.local),
        )
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.remember(cx);
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let got = buf.filled().len() > before;
        if got {
            self.state.answered.store(true, Ordering::SeqCst);
        }
        if self.state.gone.load(Ordering::SeqCst) && !got {
            // Whatever was buffered is read; nothing more can come back to a gone address.
            if matches!(polled, Poll::Pending | Poll::Ready(Ok(()))) {
                return Poll::Ready(Err(self.gone()));
            }
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.remember(cx);
        let state = Arc::clone(&self.state);
        if state.answered.swap(false, Ordering::SeqCst) {
            state
                .request_start
                .store(state.written.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        if state.gone.load(Ordering::SeqCst) {
            if state.request_bytes() == 0 {
                // Refused before a byte of this request was written.
                state.never_left.store(true, Ordering::SeqCst);
            }
            return Poll::Ready(Err(self.gone()));
        }
        let polled = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            state.written.fetch_add(n as u64, Ordering::SeqCst);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Bytes written to the socket that TCP has not transmitted even once (`tcpi_notsent_bytes`,
/// Linux 4.6 and later); None when the kernel does not say.
fn unsent_bytes(fd: RawFd) -> Option<u64> {
    let mut info = std::mem::MaybeUninit::<libc::tcp_info>::zeroed();
    let size = std::mem::size_of::<libc::tcp_info>();
    let mut length = libc::socklen_t::try_from(size).ok()?;
    // SAFETY: `fd` is the open socket of a TcpStream borrowed by the caller for the whole call;
    // `info` is a zeroed, writable tcp_info of `length` bytes, which getsockopt fills at most.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut length,
        )
    };
    let needed = std::mem::offset_of!(libc::tcp_info, tcpi_notsent_bytes) + 4;
    if result != 0 || (length as usize) < needed {
        return None;
    }
    // SAFETY: tcp_info is plain integers, valid when zeroed, and the kernel wrote the rest.
    let info = unsafe { info.assume_init() };
    Some(u64::from(info.tcpi_notsent_bytes))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn pair(registry: &Registry) -> (Tracked, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let client = client.expect("connect");
        let local = client.local_addr().expect("local").ip();
        let tracked = Tracked::new(client, registry.register(local));
        (tracked, accepted.expect("accept").0)
    }

    fn set(ips: &[&str]) -> Addresses {
        Arc::new(
            ips.iter()
                .map(|ip| ip.parse().expect("ip"))
                .collect::<BTreeSet<IpAddr>>(),
        )
    }

    /// A connection on which one request was written and read by the server.
    async fn requested(registry: &Registry) -> (Tracked, TcpStream) {
        let (mut tracked, mut server) = pair(registry).await;
        tracked
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        assert!(server.read(&mut buf).await.expect("server read") > 0);
        (tracked, server)
    }

    #[tokio::test]
    async fn a_request_refused_before_its_first_byte_never_left() {
        let registry = Registry::default();
        let (mut tracked, mut server) = requested(&registry).await;
        server
            .write_all(b"HTTP/1.1 200 OK\r\n")
            .await
            .expect("answer");
        let mut buf = [0u8; 64];
        let n = tracked.read(&mut buf).await.expect("read");
        assert!(n > 0);
        assert_eq!(registry.addresses_changed(set(&["127.0.0.1"])), 0);
        // The address goes between two requests: the next one is refused before it is written.
        assert_eq!(registry.addresses_changed(set(&["10.9.9.9"])), 1);
        let error = tracked.write_all(b"GET /again").await.expect_err("refused");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        assert!(tracked.state.request_never_left());
        assert!(error.to_string().contains("127.0.0.1 is gone"), "{error}");
    }

    #[tokio::test]
    async fn a_request_sent_before_the_address_went_is_not_called_unsent() {
        let registry = Registry::default();
        let (mut tracked, _server) = requested(&registry).await;
        let reading = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let result = tracked.read(&mut buf).await;
            (
                result.map_err(|e| e.kind()),
                tracked.state.request_never_left(),
            )
        });
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(registry.addresses_changed(set(&["10.9.9.9"])), 1);
        let (result, never_left) = reading.await.expect("reader");
        assert_eq!(result, Err(io::ErrorKind::ConnectionAborted));
        assert!(!never_left, "the server had the whole request");
    }

    #[tokio::test]
    async fn a_connection_from_a_gone_address_is_cut_when_registered() {
        let registry = Registry::default();
        registry.addresses_changed(set(&["10.9.9.9"]));
        let state = registry.register("127.0.0.1".parse().expect("ip"));
        assert!(state.gone.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn the_kernel_reports_unsent_bytes() {
        let registry = Registry::default();
        let (tracked, _server) = pair(&registry).await;
        assert_eq!(unsent_bytes(tracked.stream.as_raw_fd()), Some(0));
    }
}
