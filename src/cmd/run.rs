//! `run`: the status server, the gateway when asked for, and the control loop, until SIGTERM or SIGINT (then exit 0 within 5 s).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::{Error, Outcome};
use crate::config::Config;
use crate::detect::Detector;
use crate::flow::Flow;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::net::Family;
use crate::notify::Notifier;
use crate::server;
use crate::sidecar::Sidecar;

/// What `run` listens on, bound before anything else starts, so a taken port fails at once.
pub(crate) struct Listeners {
    status: TcpListener,
    gateway: Option<TcpListener>,
}

/// A listener with the hardened server's deep accept queue.
fn bind(what: String, address: SocketAddr) -> Result<TcpListener, Error> {
    server::bind(address).map_err(|source| Error::Bind { what, source })
}

impl Listeners {
    pub(crate) async fn bind(config: &Config) -> Result<Self, Error> {
        let listen = config.server.listen;
        let status = bind(format!("SENDSMS_LISTEN={listen}"), listen)?;
        let gateway = match &config.gateway {
            Some(gateway) => {
                let what = format!("SENDSMS_GATEWAY_LISTEN={}", gateway.listen);
                Some(bind(what, gateway.listen)?)
            }
            None => None,
        };
        Ok(Listeners { status, gateway })
    }

    /// The gateway's address as bound (port 0 picks one).
    pub(crate) fn gateway(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub(crate) fn status(&self) -> Option<SocketAddr> {
        self.status.local_addr().ok()
    }
}

pub(crate) async fn run(config: Config) -> Result<Outcome, Error> {
    let listeners = Listeners::bind(&config).await?;
    serve(config, listeners, shutdown_signal()).await
}

/// The sidecar on bound listeners, until `shutdown` resolves.
pub(crate) async fn serve(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<Outcome, Error> {
    let listen = listeners.status().unwrap_or(config.server.listen);
    let gateway_listen = listeners.gateway();
    let Listeners {
        status: listener,
        gateway: gateway_listener,
    } = listeners;
    let metrics = Arc::new(Metrics::new(config.flow.coordination.mode.name()));
    let flow = Flow::new(&config.flow, Arc::clone(&metrics))?;
    // A recheck waits for a whole round: detection, then verification, perhaps twice over.
    let recheck_timeout = flow.time_limit() * 2 + config.detection.timeout;
    let observer = flow.observer();
    let detector = Detector::new(&config.detection);
    let family = config
        .sidecar
        .families
        .first()
        .copied()
        .unwrap_or(Family::V4);
    let notifier = Notifier::start(config.notify, Arc::clone(&metrics));
    let (sidecar, shared, rechecks) =
        Sidecar::new(config.sidecar, detector, flow, metrics, notifier);
    let (stop_servers, servers_stopped) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut stopped = servers_stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let router = server::routes::router(
        Arc::clone(&shared),
        config.server.recheck_allow_remote,
        recheck_timeout,
    );
    // A few probes, Prometheus and the app's rechecks: 256 connections leave room for them all,
    // and bound a flood's memory to about 6 MiB of buffers.
    let status_limits = server::Limits {
        max_connections: 256,
        ..server::Limits::default()
    };
    let status_server = server::Server::new(router)
        .limits(status_limits)
        .liveness(server::routes::liveness(Arc::clone(&shared)))
        .serve(listener, stopped());
    let mut servers = vec![tokio::spawn(status_server)];
    tracing::info!(%listen, "status server listening");
    let mut gateway = None;
    if let (Some(mut settings), Some(listener)) = (config.gateway.clone(), gateway_listener) {
        settings.listen = gateway_listen.unwrap_or(settings.listen);
        let started = Gateway::start(
            &settings,
            &config.flow.api,
            &config.flow.credentials,
            family,
            Arc::clone(&shared),
            observer,
        );
        let router = Arc::clone(&started).router();
        // Every held call is an open connection: room for the held-call cap and more, many
        // from one address (an app pod, or a node's pods behind one address), and a form body
        // as large as the gateway reads. Callers beyond loopback share fewer slots (see
        // `MAX_REMOTE_CONNECTIONS`), so loopback, the pod's own containers, keeps the rest.
        let limits = server::Limits {
            max_connections: settings.limits.max_held.saturating_mul(2).max(2048),
            max_remote: crate::gateway::MAX_REMOTE_CONNECTIONS,
            max_per_peer: crate::gateway::MAX_REMOTE_CONNECTIONS,
            max_body_bytes: crate::gateway::MAX_REQUEST_BYTES,
            ..server::Limits::default()
        };
        let gateway_server = server::Server::new(router)
            .limits(limits)
            .serve(listener, stopped());
        servers.push(tokio::spawn(gateway_server));
        let listen = settings.listen;
        if settings.token.is_none() && !listen.ip().is_loopback() {
            tracing::warn!(%listen, "the gateway listens beyond loopback without SENDSMS_GATEWAY_TOKEN: every caller that is not on loopback is refused");
        }
        tracing::info!(%listen, hold = ?settings.limits.hold, "gateway listening");
        gateway = Some(started);
    }
    let ended = sidecar.run(rechecks, shutdown).await;
    // Held gateway calls are answered now, not cut off when the process ends.
    if let Some(gateway) = &gateway {
        gateway.stop();
    }
    let _ = stop_servers.send(true);
    // Requests in flight get a moment; the process exits regardless.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        for server in servers {
            let _ = server.await;
        }
    })
    .await;
    ended?;
    Ok(Outcome::Success)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        // Without a SIGTERM handler, SIGINT still works; SIGTERM then kills as it would anyway.
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
