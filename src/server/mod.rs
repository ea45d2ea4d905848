//! HTTP servers: one hardened way to serve a router (limits, connection cap, liveness lane, graceful shutdown), and the status routes.

pub(crate) mod listener;
pub(crate) mod routes;

use std::net::SocketAddr;

use axum::Router;

pub(crate) use listener::{Limits, Server, bind};

/// What the status server needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    /// Accept `POST /recheck` from non-loopback peers.
    pub(crate) recheck_allow_remote: bool,
}

/// Serves `router` on `listener` until `shutdown` resolves, with the default [`listener::Limits`];
/// handlers see the peer's address. Every server goes through [`Server`], so a new listener
/// inherits the same timeouts, size limits and connection cap. The status server adds its
/// liveness lane through [`Server`] itself; the gateway (issue 15) serves through this.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    Server::new(router).serve(listener, shutdown).await
}
