//! HTTP status server: liveness, readiness, status JSON, Prometheus metrics and on-demand rechecks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::metrics;
use crate::sidecar::Shared;

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    allow_remote_recheck: bool,
    recheck_timeout: Duration,
}

pub fn router(
    shared: Arc<Shared>,
    allow_remote_recheck: bool,
    recheck_timeout: Duration,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/recheck", post(recheck))
        .with_state(App {
            shared,
            allow_remote_recheck,
            recheck_timeout,
        })
}

fn text(code: StatusCode, body: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn healthz(State(app): State<App>) -> Response {
    if app.shared.alive() {
        text(StatusCode::OK, "ok\n".into())
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the control loop is stuck\n".into(),
        )
    }
}

async fn readyz(State(app): State<App>) -> Response {
    let snapshot = app.shared.snapshot();
    let code = if snapshot.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    text(code, format!("{}\n", snapshot.reason))
}

async fn status(State(app): State<App>) -> Response {
    axum::Json(app.shared.snapshot()).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        app.shared.metrics.encode(),
    )
        .into_response()
}

/// Another pod must not be able to spend the account's API budget: loopback peers only by
/// default; the control loop coalesces and rate-limits what gets through.
async fn recheck(State(app): State<App>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if !app.allow_remote_recheck && !peer.ip().to_canonical().is_loopback() {
        return text(
            StatusCode::FORBIDDEN,
            "recheck is allowed from loopback only (SENDSMS_RECHECK_ALLOW_REMOTE=true opens it)\n"
                .into(),
        );
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    if app.shared.recheck.try_send(reply).is_err() {
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many rechecks waiting\n".into(),
        );
    }
    match tokio::time::timeout(app.recheck_timeout, answer).await {
        Ok(Ok(result)) => axum::Json(result).into_response(),
        _ => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the recheck did not finish in time\n".into(),
        ),
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
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
