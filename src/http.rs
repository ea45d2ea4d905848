//! HTTP plumbing shared by detection and the sendSMS client: hardened client builders and capped bodies.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

/// Why a body could not be read; carries no URL, so it is safe to show.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the body exceeds {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body was cut short: {0}")]
    Transport(String),
}

/// Mozilla's roots, carried in the binary, so the image needs no CA bundle and the host's
/// store (or its absence) changes nothing.
fn root_certificates() -> &'static [reqwest::Certificate] {
    static ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        webpki_root_certs::TLS_SERVER_ROOT_CERTS
            .iter()
            .filter_map(|der| reqwest::Certificate::from_der(der).ok())
            .collect()
    })
}

/// rustls' process-wide crypto provider: ring, which builds a smaller binary than reqwest's
/// aws-lc-rs and covers what the web PKI needs (TLS 1.2 and 1.3, ECDSA, RSA, Ed25519).
/// reqwest panics when it builds a client with no provider installed, so every client
/// (tests' too) is built after this.
pub(crate) fn install_crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Err means another provider was installed first; that one is kept.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The base of every client: no proxy from the environment (a corporate proxy would report its
/// own address as ours, or see the key), no redirects (a redirect could carry the key's query
/// string elsewhere), a timeout on everything, and keep-alive.
pub(crate) fn client_builder(
    timeout: Duration,
    local_address: Option<IpAddr>,
) -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tls_certs_only(root_certificates().iter().cloned())
        .local_address(local_address)
        .user_agent(concat!("sendsms-whitelister/", env!("CARGO_PKG_VERSION")))
}

/// A reqwest error as text without the URL, which may carry the API key. reqwest's own
/// Display stops at "error sending request"; the causes below it say what really happened.
pub(crate) fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_body() || error.is_decode() {
        "body failed"
    } else {
        "request failed"
    };
    let error = error.without_url();
    let mut text = format!("{kind}: {error}");
    let mut cause = std::error::Error::source(&error);
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// Reads at most `limit` bytes of body; more is an error, not a truncation.
pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| BodyError::Transport(describe(e)))?
    {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
