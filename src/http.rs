//! HTTP plumbing shared by detection and the sendSMS client: hardened client builders and capped bodies.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

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

/// The same built-in roots as one PEM bundle, for a client that takes PEM (the Redis store's
/// `rediss://`): the host's store is never read for it either.
pub(crate) fn builtin_roots_pem() -> &'static [u8] {
    use base64::Engine;
    static PEM: OnceLock<Vec<u8>> = OnceLock::new();
    PEM.get_or_init(|| {
        let mut pem = String::new();
        for der in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
            let text = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
            pem.push_str("-----BEGIN CERTIFICATE-----\n");
            for line in text.as_bytes().chunks(64) {
                pem.push_str(&String::from_utf8_lossy(line));
                pem.push('\n');
            }
            pem.push_str("-----END CERTIFICATE-----\n");
        }
        pem.into_bytes()
    })
}

/// The TLS settings of a client built without reqwest (the gateway's): the same roots, with
/// `extra` (`SENDSMS_EXTRA_CA_FILE`) as for every API client, and HTTP/1.1 only.
pub(crate) fn tls_config(extra: &ExtraRoots) -> std::sync::Arc<rustls::ClientConfig> {
    install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
    roots.add_parsable_certificates(extra.1.iter().cloned());
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    std::sync::Arc::new(config)
}

/// CA certificates trusted in addition to the built-in roots, never instead of them
/// (`SENDSMS_EXTRA_CA_FILE`): for the API's clients and an `https://` bootstrap proxy only, as
/// detection must not take a re-signing proxy's word for this host's address.
#[derive(Clone, Default)]
pub(crate) struct ExtraRoots(
    Arc<Vec<reqwest::Certificate>>,
    Arc<Vec<CertificateDer<'static>>>,
);

impl ExtraRoots {
    /// The certificates of a PEM file; an error says what is wrong with it.
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let certificates = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("not a PEM file of certificates ({})", describe(e)))?;
        if certificates.is_empty() {
            return Err("it holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
        }
        // The roots are only parsed when a client is built: build one now, so a certificate
        // rustls refuses is a configuration error at start, not a failure at the first call.
        install_crypto_provider();
        reqwest::Client::builder()
            .tls_certs_only(certificates.iter().cloned())
            .build()
            .map_err(|e| {
                format!(
                    "a certificate in it is not usable as a root ({})",
                    describe(e)
                )
            })?;
        // The same certificates as rustls takes them, for the gateway's client.
        let der = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("not a PEM file of certificates ({e})"))?;
        Ok(ExtraRoots(Arc::new(certificates), Arc::new(der)))
    }

    /// `builder` trusting these roots too.
    pub(crate) fn trusted_by(&self, builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
        builder.tls_certs_merge(self.0.iter().cloned())
    }
}

impl fmt::Debug for ExtraRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExtraRoots({} certificates)", self.0.len())
    }
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

/// No connection could be opened: refused, no route, a host name that does not resolve (with
/// a proxy, the proxy's). A refused certificate fails while connecting too, but then something
/// did answer, so it is not counted here.
pub(crate) fn is_unreachable(error: &reqwest::Error) -> bool {
    error.is_connect() && !is_tls_failure(error)
}

/// The TLS handshake failed: most often a certificate no trusted root signed.
pub(crate) fn is_tls_failure(error: &reqwest::Error) -> bool {
    /// rustls' error travels inside io::Errors (two deep through hyper), whose `source`
    /// skips what they wrap: look inside each.
    fn is_rustls(error: &(dyn std::error::Error + 'static)) -> bool {
        if error.is::<rustls::Error>() {
            return true;
        }
        error
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
            .is_some_and(|inner| is_rustls(inner))
    }
    let mut cause = std::error::Error::source(error);
    while let Some(inner) = cause {
        if is_rustls(inner) {
            return true;
        }
        cause = inner.source();
    }
    false
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn the_pem_bundle_holds_exactly_the_built_in_roots() {
        let parsed: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(builtin_roots_pem())
                .collect::<Result<_, _>>()
                .expect("valid PEM");
        assert_eq!(parsed.len(), webpki_root_certs::TLS_SERVER_ROOT_CERTS.len());
        assert!(
            parsed
                .iter()
                .zip(webpki_root_certs::TLS_SERVER_ROOT_CERTS)
                .all(|(ours, theirs)| ours.as_ref() == theirs.as_ref())
        );
    }
}
