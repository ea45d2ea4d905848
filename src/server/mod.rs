//! HTTP servers: one way to serve a router (connect info, graceful shutdown), and the status routes.

pub(crate) mod routes;

use std::net::SocketAddr;

use axum::Router;

/// What the status server needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    /// Accept `POST /recheck` from non-loopback peers.
    pub(crate) recheck_allow_remote: bool,
}

/// Serves `router` on `listener` until `shutdown` resolves; handlers see the peer's address.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
