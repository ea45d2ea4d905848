//! HTTP clients for the tests' own requests (status endpoints, the emulator's state).

use std::sync::Once;

/// `reqwest::Client::builder()`, once rustls has a crypto provider (reqwest is built without
/// one); ring, as the binary uses, installed here directly so the harness needs nothing from
/// the crate under test.
pub fn http_client() -> reqwest::ClientBuilder {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err only when a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().no_proxy()
}
