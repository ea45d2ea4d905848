//! `run`: the status server, the gateway when asked for, and the control loop, until SIGTERM or SIGINT (then exit 0 within 5 s).

use std::sync::Arc;
use std::time::Duration;

use super::{Error, Outcome};
use crate::config::Config;
use crate::detect::Detector;
use crate::flow::Flow;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::net::Family;
use crate::server;
use crate::sidecar::Sidecar;

pub(crate) async fn run(config: Config) -> Result<Outcome, Error> {
    let listen = config.server.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Bind {
            what: format!("SENDSMS_LISTEN={listen}"),
            source,
        })?;
    let gateway_listener = match &config.gateway {
        Some(gateway) => Some(
            tokio::net::TcpListener::bind(gateway.listen)
                .await
                .map_err(|source| Error::Bind {
                    what: format!("SENDSMS_GATEWAY_LISTEN={}", gateway.listen),
                    source,
                })?,
        ),
        None => None,
    };
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
    let (sidecar, shared, rechecks) = Sidecar::new(config.sidecar, detector, flow, metrics);
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
    let mut servers = vec![tokio::spawn(server::serve(listener, router, stopped()))];
    tracing::info!(%listen, "status server listening");
    let mut gateway = None;
    if let (Some(settings), Some(listener)) = (&config.gateway, gateway_listener) {
        let started = Gateway::start(
            settings,
            &config.flow.api,
            &config.flow.credentials,
            family,
            Arc::clone(&shared),
            observer,
        );
        let router = Arc::clone(&started).router();
        servers.push(tokio::spawn(server::serve(listener, router, stopped())));
        let listen = settings.listen;
        if settings.token.is_none() && !listen.ip().is_loopback() {
            tracing::warn!(%listen, "the gateway listens beyond loopback without SENDSMS_GATEWAY_TOKEN: every caller that is not on loopback is refused");
        }
        tracing::info!(%listen, hold = ?settings.limits.hold, "gateway listening");
        gateway = Some(started);
    }
    sidecar.run(rechecks, shutdown_signal()).await;
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
