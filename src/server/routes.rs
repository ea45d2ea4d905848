//! The status routes: liveness, readiness, status JSON, Prometheus metrics and on-demand rechecks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::metrics;
use crate::status::{Cause, Shared};

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    allow_remote_recheck: bool,
    recheck_timeout: Duration,
}

/// The status server's routes over the loop's shared state.
pub(crate) fn router(
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

/// What a full server still answers (the liveness lane of `server::listener`): `/healthz`,
/// and 503 for anything else.
pub(crate) fn liveness(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .fallback(|| async {
            text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is at its connection limit; only /healthz is answered\n".into(),
            )
        })
        .with_state(App {
            shared,
            allow_remote_recheck: false,
            recheck_timeout: Duration::ZERO,
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
        app.shared.metrics().encode(),
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
    let Some(answer) = app.shared.request_recheck(Cause::Asked) else {
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many rechecks waiting\n".into(),
        );
    };
    match tokio::time::timeout(app.recheck_timeout, answer).await {
        Ok(Ok(result)) => axum::Json(result).into_response(),
        _ => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the recheck did not finish in time\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::net::Family;
    use crate::status::RecheckResult;

    /// The routes served in-process on a free loopback port; the loop's side is `shared`.
    async fn serve(
        stale_after: Duration,
    ) -> (
        String,
        Arc<Shared>,
        tokio::sync::mpsc::Receiver<crate::status::RecheckRequest>,
    ) {
        let (shared, rechecks) = Shared::new(
            &[Family::V4],
            stale_after,
            Arc::new(Metrics::new(None)),
            None,
            None,
            Arc::default(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = router(Arc::clone(&shared), false, Duration::from_secs(5));
        tokio::spawn(crate::server::serve(listener, app, std::future::pending()));
        (format!("http://{addr}"), shared, rechecks)
    }

    async fn get(url: String) -> (u16, String, String) {
        let client = crate::http::client_builder(Duration::from_secs(5), None)
            .build()
            .expect("client");
        let response = client.get(url).send().await.expect("answer");
        let code = response.status().as_u16();
        let kind = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (code, kind, response.text().await.expect("body"))
    }

    #[tokio::test]
    async fn liveness_readiness_status_and_metrics() {
        let (base, shared, _rechecks) = serve(Duration::from_secs(60)).await;
        assert_eq!(get(format!("{base}/healthz")).await.0, 200);
        let (code, _, body) = get(format!("{base}/readyz")).await;
        assert_eq!(
            (code, body.trim()),
            (503, "starting: the egress IP is not detected yet")
        );
        shared.update(|s| {
            s.ready = true;
            s.reason = "ready: ipv4 203.0.113.10 whitelisted and verified".into();
        });
        shared.metrics().ip_changes.inc();
        let (code, _, body) = get(format!("{base}/readyz")).await;
        assert_eq!(code, 200, "{body}");
        let (code, kind, body) = get(format!("{base}/status")).await;
        assert_eq!((code, kind.as_str()), (200, "application/json"));
        let status: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(status["ready"], true);
        assert_eq!(status["counters"]["ip_changes"], 1, "{status}");
        assert_eq!(status["families"]["ipv4"]["phase"], "detecting");
        assert!(status["coordination"].is_null());
        let (code, kind, body) = get(format!("{base}/metrics")).await;
        assert_eq!((code, kind.as_str()), (200, metrics::CONTENT_TYPE));
        assert!(
            body.contains("sendsms_whitelister_ip_changes_total 1"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn a_stuck_loop_fails_liveness() {
        let (base, shared, _rechecks) = serve(Duration::from_millis(50)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (code, _, body) = get(format!("{base}/healthz")).await;
        assert_eq!((code, body.trim()), (503, "the control loop is stuck"));
        shared.beat();
        assert_eq!(get(format!("{base}/healthz")).await.0, 200);
    }

    #[tokio::test]
    async fn a_recheck_from_loopback_is_answered_by_the_loop() {
        let (base, shared, mut rechecks) = serve(Duration::from_secs(60)).await;
        let answering = tokio::spawn(async move {
            let request = rechecks.recv().await.expect("a recheck");
            let _ = request.reply.send(RecheckResult {
                rechecked: true,
                status: shared.snapshot(),
            });
        });
        let client = crate::http::client_builder(Duration::from_secs(5), None)
            .build()
            .expect("client");
        let response = client
            .post(format!("{base}/recheck"))
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status().as_u16(), 200);
        let body: serde_json::Value =
            serde_json::from_str(&response.text().await.expect("body")).expect("json");
        assert_eq!(body["rechecked"], true);
        assert_eq!(body["status"]["ready"], false);
        answering.await.expect("loop side");
    }
}
