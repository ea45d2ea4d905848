//! The gateway: a drop-in sendSMS JSON API for the app, sent with the sidecar's key, that holds a call refused for the IP until the new address is verified.

mod call;
mod conn;
mod forward;
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::net::Family;
use crate::netwatch;
use crate::secret::Credentials;
use crate::sendsms::{self, CallObserver};
use crate::status::Shared;

pub(crate) use forward::Limits;
use forward::{Forwarder, Reply, Upstream};

/// A request body larger than this is refused (413): a message is at most a few kilobytes.
pub(crate) const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Connections from beyond loopback open at once, all such callers together. Under a flood
/// each open connection costs 15 to 30 KiB of RSS (hyper's 8 KiB read and write buffers, and
/// memory that closed ones leave behind); 2,000 attackers from other pods, with all 2,048
/// slots open to them, took the process from 7 to 36 MiB (issue 14 asks for less than 32).
pub(crate) const MAX_REMOTE_CONNECTIONS: usize = 512;

/// What the gateway needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Where the app reaches it, such as 127.0.0.1:9798.
    pub(crate) listen: SocketAddr,
    /// When set, every caller presents it (as `password` or `Authorization: Bearer`).
    pub(crate) token: Option<SecretString>,
    pub(crate) limits: Limits,
}

/// The gateway's state: the forwarder, and what it checks callers against.
pub(crate) struct Gateway {
    forwarder: Forwarder,
    token: Option<SecretString>,
    /// Only to take it out of an answer, should the API ever echo it.
    key: SecretString,
}

impl Gateway {
    /// The gateway over the real API's direct route; its connections follow the host's
    /// addresses (rtnetlink) and the loop's egress changes until the process ends.
    pub(crate) fn start(
        settings: &Settings,
        api: &sendsms::Settings,
        credentials: &Credentials,
        family: Family,
        shared: Arc<Shared>,
        observer: Arc<dyn CallObserver>,
    ) -> Arc<Self> {
        let upstream = Arc::new(upstream::Api::new(api, credentials, family));
        let addresses = match netwatch::follow() {
            Ok(addresses) => Some(addresses),
            Err(e) => {
                tracing::warn!(error = %e, "local address changes cannot be followed (route netlink); connections from a lost address end at SENDSMS_REQUEST_TIMEOUT");
                None
            }
        };
        tokio::spawn(Arc::clone(&upstream).follow(addresses, shared.readiness()));
        Self::over(settings, upstream, credentials, shared, observer)
    }

    /// The gateway over any upstream (tests give a fake).
    fn over(
        settings: &Settings,
        upstream: Arc<dyn Upstream>,
        credentials: &Credentials,
        shared: Arc<Shared>,
        observer: Arc<dyn CallObserver>,
    ) -> Arc<Self> {
        shared.gateway_listening(settings.listen);
        Arc::new(Gateway {
            forwarder: Forwarder::new(upstream, shared, observer, settings.limits.clone()),
            token: settings.token.clone(),
            key: credentials.api_key.clone(),
        })
    }

    /// `/json`, GET with a query string or POST with a form, as the real API.
    pub(crate) fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/json", get(json).post(json))
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .with_state(self)
    }

    /// The process is stopping: held calls end their hold now and are answered.
    pub(crate) fn stop(&self) {
        self.forwarder.stop();
    }

    fn refuse(&self, label: &'static str, refusal: &call::Refusal) -> Response {
        self.forwarder.count_refused_caller(label);
        tracing::debug!(action = label, reason = %refusal, "a gateway caller was refused");
        shaped(
            StatusCode::FORBIDDEN,
            -8,
            &refusal.to_string(),
            json!({"gateway": "caller_refused"}),
        )
    }

    /// The API's answer as it came, but never with the key in it.
    fn pass(&self, answer: forward::Answer) -> Response {
        let status = StatusCode::from_u16(answer.http_status).unwrap_or(StatusCode::BAD_GATEWAY);
        let body = redact(answer.body, self.key.expose_secret());
        let mut response = (status, body).into_response();
        if let Some(value) = answer.content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        response
    }
}

/// A sendSMS-shaped answer of the gateway's own: the app's client reads it as it reads the API's.
fn shaped(code: StatusCode, status: i64, message: &str, details: serde_json::Value) -> Response {
    let body =
        json!({"status": status, "message": format!("gateway: {message}"), "details": details});
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// `body` with every occurrence of `secret` (as is, or URL-encoded) replaced.
fn redact(body: Bytes, secret: &str) -> Bytes {
    let encoded: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let find = |text: &[u8], needle: &[u8]| {
        (!needle.is_empty())
            .then(|| text.windows(needle.len()).position(|w| w == needle))
            .flatten()
    };
    let needles = [secret.as_bytes(), encoded.as_bytes()];
    if needles.iter().all(|needle| find(&body, needle).is_none()) {
        return body;
    }
    let mut text = body.to_vec();
    for needle in needles {
        while let Some(at) = find(&text, needle) {
            text.splice(at..at + needle.len(), b"[REDACTED]".iter().copied());
        }
    }
    Bytes::from(text)
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| {
            v.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        })
}

async fn json(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    let form = (method == Method::POST).then_some(body);
    if form.is_some() && !is_form(&headers) {
        gateway.forwarder.count_refused_caller("other");
        return shaped(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            -4,
            "a POST body must be application/x-www-form-urlencoded",
            json!({"gateway": "caller_refused"}),
        );
    }
    let from_query = call::Params::parse(query.as_bytes());
    let from_form = form.as_deref().map(call::Params::parse);
    let name = from_form
        .as_ref()
        .and_then(|f| f.get("action"))
        .or_else(|| from_query.get("action"))
        .unwrap_or_default();
    let action = call::action(name);
    let label = match action {
        Ok(action) => action.label,
        Err(refused) => refused.label,
    };
    let password = from_form
        .as_ref()
        .and_then(|f| f.password.as_deref())
        .or(from_query.password.as_deref());
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let presented = call::presented(authorization, password);
    let peer: IpAddr = peer.ip();
    if let Err(refusal) = call::authorize(peer, gateway.token.as_ref(), presented) {
        return gateway.refuse(label, &refusal);
    }
    let action = match action {
        Ok(action) => action,
        Err(refused) => {
            let refusal = call::Refusal::Action {
                name: refused.label.to_owned(),
                why: refused.why,
            };
            return gateway.refuse(label, &refusal);
        }
    };
    let call = call::Call {
        action,
        query: from_query.forwarded,
        form: from_form.map(|f| f.forwarded),
    };
    let (reply, _, held) = gateway.forwarder.forward(&call).await;
    let mut response = match reply {
        Reply::Api(answer) => gateway.pass(answer),
        Reply::Unknown(why) => shaped(
            StatusCode::BAD_GATEWAY,
            -16,
            &format!(
                "the outcome is unknown ({why}); the call may have been carried out and was not sent again: check before sending it again (message_status)"
            ),
            json!({"gateway": "outcome_unknown", "sent": null}),
        ),
        Reply::NotSent { status, why } => shaped(
            StatusCode::SERVICE_UNAVAILABLE,
            status,
            &format!("{why}; it was not sent, and may be sent again"),
            json!({"gateway": "not_sent", "sent": false}),
        ),
    };
    if let Some(held) = held {
        response.headers_mut().insert(
            HELD_HEADER,
            header::HeaderValue::from(held.as_millis() as u64),
        );
    }
    response
}

/// Added to the answer of a call the gateway held: how long, in milliseconds.
pub(crate) const HELD_HEADER: &str = "x-sendsms-gateway-held-ms";

#[cfg(test)]
mod tests;
