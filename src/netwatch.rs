//! This host's addresses as rtnetlink announces them: every added or removed address is seen at once, not at the next poll.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{AsyncSocket, AsyncSocketExt, SocketAddr, TokioSocket};
use tokio::sync::watch;

/// The addresses of every interface of this host (its network namespace), loopback included.
pub(crate) type Addresses = Arc<BTreeSet<IpAddr>>;

/// The addresses now, as the kernel lists them.
pub(crate) fn addresses() -> io::Result<Addresses> {
    let found = if_addrs::get_if_addrs()?
        .into_iter()
        .map(|interface| interface.ip().to_canonical())
        .collect();
    Ok(Arc::new(found))
}

/// A route netlink socket subscribed to the IPv4 and IPv6 address groups. Its messages are only
/// a wake-up: after each burst the whole set is read again, so a message the kernel dropped
/// (a full queue answers ENOBUFS) loses nothing, and no message format is parsed here.
struct Announcements {
    socket: TokioSocket,
    buffer: Vec<u8>,
}

impl Announcements {
    fn open() -> io::Result<Self> {
        let mut socket = TokioSocket::new(NETLINK_ROUTE)?;
        let groups = libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR;
        socket
            .socket_mut()
            .bind(&SocketAddr::new(0, groups.unsigned_abs()))?;
        Ok(Announcements {
            socket,
            buffer: Vec::with_capacity(64 * 1024),
        })
    }

    /// Waits for an announcement, then drains every one already queued.
    async fn next(&mut self) -> io::Result<()> {
        self.buffer.clear();
        match self.socket.recv(&mut self.buffer).await {
            Ok(()) => {}
            // The kernel dropped announcements: something changed, and the re-read sees it.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
            Err(e) => return Err(e),
        }
        loop {
            self.buffer.clear();
            match self
                .socket
                .socket_ref()
                .recv(&mut self.buffer, libc::MSG_DONTWAIT)
            {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(_) => return Ok(()),
            }
        }
    }
}

/// Follows this host's addresses: the receiver always holds the current set, and changes when
/// the kernel announces one. Fails when route netlink is unavailable (a sandbox without it).
pub(crate) fn follow() -> io::Result<watch::Receiver<Addresses>> {
    // Subscribed before the first read, so no change falls between the two.
    let mut announcements = Announcements::open()?;
    let (publish, current) = watch::channel(addresses()?);
    tokio::spawn(async move {
        loop {
            if let Err(e) = announcements.next().await {
                tracing::warn!(error = %e, "address announcements stopped; stale connections are now found by their timeouts only");
                return;
            }
            match addresses() {
                Ok(now) => {
                    publish.send_if_modified(|known| {
                        let changed = **known != *now;
                        if changed {
                            *known = now;
                        }
                        changed
                    });
                }
                Err(e) => tracing::warn!(error = %e, "the host's addresses could not be read"),
            }
            if publish.is_closed() {
                return;
            }
        }
    });
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_current_set_holds_loopback() {
        let current = follow().expect("route netlink");
        assert!(
            current.borrow().contains(&IpAddr::from([127, 0, 0, 1])),
            "{:?}",
            current.borrow()
        );
    }
}
