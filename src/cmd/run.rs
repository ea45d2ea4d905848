//! `run`: the status server and the control loop, until SIGTERM or SIGINT (then exit 0 within 5 s).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{Error, Outcome};
use crate::config::Config;
use crate::detect::Detector;
use crate::flow::Flow;
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::server;
use crate::sidecar::Sidecar;

pub(crate) async fn run(config: Config) -> Result<Outcome, Error> {
    let listen = config.server.listen;
    let listener = server::bind(listen).map_err(|source| Error::Bind {
        what: format!("SENDSMS_LISTEN={listen}"),
        source,
    })?;
    let metrics = Arc::new(Metrics::new(config.flow.coordination.mode.name()));
    let flow = Flow::new(&config.flow, Arc::clone(&metrics))?;
    // A recheck waits for a whole round: detection, then verification, perhaps twice over.
    let recheck_timeout = flow.time_limit() * 2 + config.detection.timeout;
    let detector = Detector::new(&config.detection);
    let notifier = Notifier::start(config.notify, Arc::clone(&metrics));
    let (sidecar, shared, rechecks) =
        Sidecar::new(config.sidecar, detector, flow, metrics, notifier);
    let (stop_server, server_stopped) = oneshot::channel::<()>();
    let router = server::routes::router(
        Arc::clone(&shared),
        config.server.recheck_allow_remote,
        recheck_timeout,
    );
    // A few probes, Prometheus and the app's rechecks: 256 connections leave room for them all,
    // and bound a flood's memory to about 6 MiB of buffers.
    let limits = server::Limits {
        max_connections: 256,
        ..server::Limits::default()
    };
    let server = server::Server::new(router)
        .limits(limits)
        .liveness(server::routes::liveness(Arc::clone(&shared)))
        .serve(listener, async move {
            let _ = server_stopped.await;
        });
    let server = tokio::spawn(server);
    tracing::info!(%listen, "status server listening");
    let ended = sidecar.run(rechecks, shutdown_signal()).await;
    let _ = stop_server.send(());
    // In-flight status requests get a moment; the process exits regardless.
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
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
