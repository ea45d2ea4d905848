//! `health`: exit 0 when the local sidecar is ready; Docker's HEALTHCHECK for an image without a shell or curl.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{Error, Outcome};
use crate::config::parse_listen;
use crate::http;

pub(crate) async fn run(url: Option<String>) -> Result<Outcome, Error> {
    let url = match url {
        Some(url) => url,
        None => {
            let listen = parse_listen(std::env::var("SENDSMS_LISTEN").ok())?;
            // The sidecar listens on all addresses by default; ask it on loopback.
            let ip = match listen.ip() {
                IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
                IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1]),
                ip => ip,
            };
            format!("http://{}/readyz", SocketAddr::new(ip, listen.port()))
        }
    };
    let client = http::client_builder(Duration::from_secs(3), None)
        .build()
        .map_err(|e| Error::NotReady(http::describe(e)))?;
    let response = client
        .get(&url)
        .send()
        .await
        .map_err(|e| Error::NotReady(format!("{url}: {}", http::describe(e))))?;
    let status = response.status();
    let body = http::read_capped(response, 4096).await.unwrap_or_default();
    let reason = String::from_utf8_lossy(&body).trim().to_owned();
    if status.is_success() {
        say!("{reason}");
        Ok(Outcome::Success)
    } else {
        Err(Error::NotReady(format!(
            "not ready (HTTP {}): {reason}",
            status.as_u16()
        )))
    }
}
