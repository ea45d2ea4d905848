//! The gateway as an app sees it: sends through it, and the emulator's message log that
//! shows whether each arrived exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::http_client;
use crate::secrets::assert_clean;

/// The header on the answer of a call the gateway held.
pub const HELD_HEADER: &str = "x-sendsms-gateway-held-ms";

/// One send through the gateway, as the app saw it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub text: String,
    pub code: u16,
    pub body: String,
    /// How long the gateway held it, when it did.
    pub held_ms: Option<u64>,
    pub took: Duration,
}

impl Sent {
    /// The sendSMS `status` of the answer.
    pub fn status(&self) -> Option<i64> {
        serde_json::from_str::<Value>(&self.body)
            .ok()?
            .get("status")?
            .as_i64()
    }
}

/// A client for the app's side: no proxy, a long timeout (a call may be held).
pub fn app_client() -> reqwest::Client {
    http_client()
        .timeout(Duration::from_secs(90))
        .build()
        .expect("client")
}

/// `message_send` of `text` through the gateway at `gateway`, with `extra` query parameters
/// and an optional `Authorization` header; no secret (the key, a token) may be in the answer.
pub async fn send(
    client: &reqwest::Client,
    gateway: SocketAddr,
    text: &str,
    extra: &[(&str, &str)],
    authorization: Option<&str>,
) -> Sent {
    let mut url = url::Url::parse(&format!("http://{gateway}/json")).expect("url");
    url.query_pairs_mut()
        .append_pair("action", "message_send")
        .append_pair("to", "0722000000")
        .append_pair("text", text)
        .extend_pairs(extra);
    let mut request = client.get(url);
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    let started = Instant::now();
    let (code, body, held_ms) = match request.send().await {
        Ok(response) => {
            let held_ms = response
                .headers()
                .get(HELD_HEADER)
                .and_then(|v| v.to_str().ok()?.parse().ok());
            let code = response.status().as_u16();
            (code, response.text().await.unwrap_or_default(), held_ms)
        }
        Err(e) => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(inner) = cause {
                text.push_str(&format!(": {inner}"));
                cause = inner.source();
            }
            (0, text, None)
        }
    };
    assert_clean("a gateway answer", &body);
    Sent {
        text: text.to_owned(),
        code,
        body,
        held_ms,
        took: started.elapsed(),
    }
}

/// `count` sends of `PREFIX-NNNN` at `per_second`, each started on time whatever the others
/// are doing (held calls overlap), all answered.
pub async fn send_stream(
    gateway: SocketAddr,
    prefix: &str,
    count: usize,
    per_second: f64,
) -> Vec<Sent> {
    let client = app_client();
    let started = tokio::time::Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for index in 0..count {
        tokio::time::sleep_until(started + Duration::from_secs_f64(index as f64 / per_second))
            .await;
        let (client, text) = (client.clone(), format!("{prefix}-{index:04}"));
        sends.spawn(async move { send(&client, gateway, &text, &[], None).await });
    }
    let mut sent: Vec<Sent> = sends.join_all().await;
    sent.sort_by(|a, b| a.text.cmp(&b.text));
    sent
}

/// How many times each text is in the emulator's message log.
pub fn logged(state: &Value) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for message in state["messages"].as_array().into_iter().flatten() {
        let text = message["text"].as_str().unwrap_or_default().to_owned();
        *counts.entry(text).or_insert(0) += 1;
    }
    counts
}

/// Every message sent is in the log exactly once, and nothing else is.
pub fn assert_each_logged_once(state: &Value, sent: &[Sent]) {
    let logged = logged(state);
    let lost: Vec<&Sent> = sent
        .iter()
        .filter(|s| !logged.contains_key(&s.text))
        .collect();
    assert!(lost.is_empty(), "lost: {lost:#?}");
    let twice: Vec<(&String, &usize)> = logged.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    assert_eq!(
        logged.len(),
        sent.len(),
        "the log holds messages nobody sent"
    );
}

/// The 50th and 99th percentiles and the maximum of `values` (nearest rank).
pub fn percentiles(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let index = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    };
    if sorted.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    (rank(0.50), rank(0.99), sorted[sorted.len() - 1])
}
