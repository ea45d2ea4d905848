//! The HTTP client for one route (direct or bootstrap): builds each request, observes and classifies it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;
use url::Url;

use super::api::{
    Action, ApiError, ApiResponse, MAX_RESPONSE_BYTES, Unparsed, Verdict, parse_response,
};
use super::whitelist::Whitelist;
use crate::http;
use crate::net::Family;
use crate::secret::{Credentials, SecretUrl, printable};

/// Called around every API request: the budgets wait in `before_call` (an error means the
/// call is not made, and says why), the metrics count in `after_call`.
pub(crate) trait CallObserver: Send + Sync {
    fn before_call(
        &self,
        _action: &'static str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>> {
        Box::pin(async { Ok(()) })
    }
    fn after_call(&self, _action: &'static str, _verdict: Verdict) {}
}

/// What every client needs from the configuration.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The JSON endpoint, such as `https://api.sendsms.ro/json`; never shown with a query.
    pub(crate) url: Url,
    /// One HTTP request, connect included.
    pub(crate) request_timeout: Duration,
    pub(crate) bootstrap: BootstrapPath,
    /// Roots trusted beside the built-in ones (`SENDSMS_EXTRA_CA_FILE`).
    pub(crate) extra_roots: http::ExtraRoots,
}

/// How `token_add_ip` reaches the API: the already-authorized route.
#[derive(Clone, Debug, Default)]
pub(crate) struct BootstrapPath {
    pub(crate) proxy: Option<SecretUrl>,
    pub(crate) bind: Option<IpAddr>,
}

impl BootstrapPath {
    /// No bootstrap path: writes go the direct route, which only a Cloud key or a listed IP can use.
    pub(crate) fn is_direct(&self) -> bool {
        self.proxy.is_none() && self.bind.is_none()
    }
}

impl fmt::Display for BootstrapPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.proxy, &self.bind) {
            (None, None) => f.write_str("the direct route"),
            (Some(p), None) => write!(f, "bootstrap proxy {p} (SENDSMS_BOOTSTRAP_PROXY)"),
            (None, Some(b)) => write!(f, "bootstrap bind address {b} (SENDSMS_BOOTSTRAP_BIND)"),
            (Some(p), Some(b)) => write!(
                f,
                "bootstrap proxy {p} from {b} (SENDSMS_BOOTSTRAP_PROXY, SENDSMS_BOOTSTRAP_BIND)"
            ),
        }
    }
}

/// A client bound to one route: the direct path or the bootstrap path.
#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    endpoint: Url,
    credentials: Credentials,
    route: String,
    observer: Option<Arc<dyn CallObserver>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// The HTTP client for a route cannot be built (a proxy URL reqwest refuses, a TLS set-up error).
#[derive(Debug, thiserror::Error)]
#[error("the HTTP client for {route} cannot be built: {reason}")]
pub(crate) struct BuildError {
    route: String,
    reason: String,
}

impl Client {
    /// The locked key from this host, exactly as the SMS-sending app will use it, over `family`.
    pub(crate) fn direct(
        settings: &Settings,
        credentials: &Credentials,
        family: Family,
        observer: Option<Arc<dyn CallObserver>>,
    ) -> Result<Self, BuildError> {
        let mut client = Self::build(
            settings,
            credentials,
            &BootstrapPath::default(),
            Some(family),
            observer,
        )?;
        client.route = format!("the direct route over {family}");
        Ok(client)
    }

    /// The already-authorized route for writes.
    pub(crate) fn bootstrap(
        settings: &Settings,
        credentials: &Credentials,
        observer: Option<Arc<dyn CallObserver>>,
    ) -> Result<Self, BuildError> {
        Self::build(settings, credentials, &settings.bootstrap, None, observer)
    }

    fn build(
        settings: &Settings,
        credentials: &Credentials,
        path: &BootstrapPath,
        family: Option<Family>,
        observer: Option<Arc<dyn CallObserver>>,
    ) -> Result<Self, BuildError> {
        let route = path.to_string();
        let fail = |reason: String| BuildError {
            route: route.clone(),
            reason,
        };
        let mut builder = settings.extra_roots.trusted_by(http::client_builder(
            settings.request_timeout,
            path.bind.or(family.map(Family::unspecified)),
        ));
        if let Some(proxy) = &path.proxy {
            // Proxy::all tunnels https with CONNECT, so the proxy sees only the host name.
            let proxy = reqwest::Proxy::all(proxy.expose())
                .map_err(|_| fail(format!("{proxy} is not a usable proxy")))?;
            builder = builder.proxy(proxy);
        }
        let http = builder.build().map_err(|e| fail(http::describe(e)))?;
        Ok(Client {
            http,
            endpoint: settings.url.clone(),
            credentials: credentials.clone(),
            route,
            observer,
        })
    }

    pub(crate) fn route(&self) -> &str {
        &self.route
    }

    /// One request. Only the action's success codes are success; a negative status becomes
    /// `ApiError::Refused`, any other `ApiError::UnexpectedStatus`; the caller classifies.
    pub(crate) async fn call(&self, action: &Action) -> Result<ApiResponse, ApiError> {
        if let Some(observer) = &self.observer {
            observer
                .before_call(action.name())
                .await
                .map_err(ApiError::NotSent)?;
        }
        let result = self.send(action).await;
        if let Some(observer) = &self.observer {
            let verdict = match &result {
                Ok(_) => Verdict::Success,
                Err(e) => e.verdict(),
            };
            observer.after_call(action.name(), verdict);
        }
        result
    }

    async fn send(&self, action: &Action) -> Result<ApiResponse, ApiError> {
        let mut url = self.endpoint.clone();
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("action", action.name());
            query.append_pair("username", &self.credentials.username);
            query.append_pair("password", self.credentials.api_key.expose_secret());
            for (name, value) in action.params() {
                query.append_pair(name, &value);
            }
        }
        let response = self.http.get(url).send().await.map_err(|e| {
            if http::is_unreachable(&e) {
                ApiError::Unreachable(http::describe(e))
            } else if http::is_tls_failure(&e) {
                ApiError::Transport(format!(
                    "{} (no trusted root signed the certificate of the API or of an https:// \
                     proxy; a proxy that re-signs TLS needs its CA in SENDSMS_EXTRA_CA_FILE)",
                    http::describe(e)
                ))
            } else {
                ApiError::Transport(http::describe(e))
            }
        })?;
        let status = response.status();
        // No path of the API answers 404, and a redirect is never followed (it could carry the
        // key elsewhere): either says the URL is not the endpoint.
        if status == reqwest::StatusCode::NOT_FOUND || status.is_redirection() {
            return Err(self.not_the_api(format!(
                "it answered HTTP {}{}",
                status.as_u16(),
                if status.is_redirection() {
                    " (a redirect, never followed)"
                } else {
                    ""
                }
            )));
        }
        if !status.is_success() {
            return Err(ApiError::Http(status.as_u16()));
        }
        let body = http::read_capped(response, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| match e {
                http::BodyError::TooLarge { .. } => ApiError::Malformed(e.to_string()),
                http::BodyError::Transport(t) => ApiError::Transport(t),
            })?;
        let answer = parse_response(&body).map_err(|e| match e {
            Unparsed::Foreign(why) => self.not_the_api(why),
            Unparsed::Damaged(why) => ApiError::Malformed(why),
        })?;
        if action.succeeded(answer.status) {
            return Ok(answer);
        }
        // The API's own words may echo the key or carry another credential: they are
        // redacted whole before anything stores, logs or shows them, then cut to one safe
        // line of 128 characters.
        let message = printable(&self.credentials.redact(&answer.message));
        Err(if answer.status.is_error() {
            ApiError::Refused {
                status: answer.status,
                message,
            }
        } else {
            ApiError::UnexpectedStatus {
                code: answer.status.code(),
                message,
            }
        })
    }

    /// The endpoint, shown without credentials, query or fragment (the configuration allows
    /// none of them; this holds even if that changes).
    fn not_the_api(&self, why: String) -> ApiError {
        let mut shown = self.endpoint.clone();
        shown.set_query(None);
        shown.set_fragment(None);
        let _ = shown.set_password(None);
        let _ = shown.set_username("");
        ApiError::NotTheApi(format!("{shown} does not look like the sendSMS API: {why}"))
    }

    pub(crate) async fn list_ips(&self) -> Result<Whitelist, ApiError> {
        let answer = self.call(&Action::TokenListIps).await?;
        Ok(Whitelist::from_details(&answer.details))
    }

    /// Adds `ip`; "already listed" is success, as the caller wanted the IP listed.
    pub(crate) async fn add_ip(&self, ip: IpAddr) -> Result<Added, ApiError> {
        match self.call(&Action::TokenAddIp { ip }).await {
            Ok(_) => Ok(Added::New),
            Err(e) if e.verdict() == Verdict::AlreadyListed => Ok(Added::Duplicate),
            Err(e) => Err(e),
        }
    }
}

/// How `token_add_ip` succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Added {
    /// The address was not listed and now is.
    New,
    /// The API said it was listed already (`-512`).
    Duplicate,
}

/// The two routes the whitelist flow uses: the direct route per family (reads and proofs) and
/// the bootstrap route (writes). Built together, rebuilt together after an egress change.
#[derive(Clone, Debug)]
pub(crate) struct Routes {
    /// Indexed by `Family as usize`, each pinned to its family: the proof for an IPv4 address
    /// must leave over IPv4, or it would prove some other address.
    direct: [Client; 2],
    bootstrap: Client,
    bootstrap_is_direct: bool,
    bootstrap_via_proxy: bool,
}

impl Routes {
    pub(crate) fn new(
        settings: &Settings,
        credentials: &Credentials,
        observer: Option<Arc<dyn CallObserver>>,
    ) -> Result<Self, BuildError> {
        let direct = |family| {
            Client::direct(
                settings,
                credentials,
                family,
                observer.as_ref().map(Arc::clone),
            )
        };
        Ok(Routes {
            direct: [direct(Family::V4)?, direct(Family::V6)?],
            bootstrap: Client::bootstrap(settings, credentials, observer)?,
            bootstrap_is_direct: settings.bootstrap.is_direct(),
            bootstrap_via_proxy: settings.bootstrap.proxy.is_some(),
        })
    }

    pub(crate) fn direct(&self, family: Family) -> &Client {
        &self.direct[family as usize]
    }

    pub(crate) fn bootstrap(&self) -> &Client {
        &self.bootstrap
    }

    pub(crate) fn bootstrap_is_direct(&self) -> bool {
        self.bootstrap_is_direct
    }

    pub(crate) fn bootstrap_via_proxy(&self) -> bool {
        self.bootstrap_via_proxy
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::emulator::{self, KeyKind};

    const KEY: &str = "k3y-in-process";

    fn settings(addr: SocketAddr) -> Settings {
        Settings {
            url: Url::parse(&format!("http://{addr}/json")).expect("url"),
            request_timeout: Duration::from_secs(5),
            bootstrap: BootstrapPath::default(),
            extra_roots: http::ExtraRoots::default(),
        }
    }

    fn credentials() -> Credentials {
        Credentials {
            username: "tester".into(),
            api_key: secrecy::SecretString::from(KEY.to_owned()),
        }
    }

    /// The emulator on `listen`, with one key that lists only `listen`'s own address.
    async fn api_on(listen: &str) -> emulator::RunningEmulator {
        let listen: SocketAddr = listen.parse().expect("address");
        emulator::start(
            listen,
            None,
            emulator::Settings {
                username: "tester".into(),
                keys: vec![(KeyKind::Default, KEY.into())],
                allow: vec![listen.ip()],
                rate_limit: 0,
                ..emulator::Settings::default()
            },
        )
        .await
        .expect("emulator")
    }

    #[tokio::test]
    async fn each_direct_route_is_pinned_to_its_family() {
        for (listen, family, other) in [
            ("127.0.0.1:0", Family::V4, Family::V6),
            ("[::1]:0", Family::V6, Family::V4),
        ] {
            let api = api_on(listen).await;
            let settings = settings(api.addr);
            let route = |family| Client::direct(&settings, &credentials(), family, None);
            let whitelist = route(family)
                .expect("client")
                .list_ips()
                .await
                .expect("the key works over its own family");
            assert!(whitelist.covers(api.addr.ip()), "{whitelist}");
            let e = route(other)
                .expect("client")
                .list_ips()
                .await
                .expect_err("pinned to the other family");
            assert!(
                matches!(e, ApiError::Unreachable(_)),
                "{family} API over {other}: {e}"
            );
            api.shutdown();
        }
    }

    #[tokio::test]
    async fn answers_up_to_256_kib_are_read_and_larger_ones_refused_whole() {
        let answer = |padding: usize| {
            let body = serde_json::json!({
                "status": 0,
                "message": "x".repeat(padding),
                "details": ["203.0.113.7"],
            });
            body.to_string().into_bytes()
        };
        let limit = MAX_RESPONSE_BYTES;
        assert_eq!(limit, 262_144);
        let overhead = answer(0).len();
        for (size, fits) in [(limit, true), (limit + 1, false)] {
            let body = answer(size - overhead);
            assert_eq!(body.len(), size);
            let addr = harness::fixed_http("127.0.0.1:0", body, Duration::ZERO).await;
            let client =
                Client::direct(&settings(addr), &credentials(), Family::V4, None).expect("client");
            let read = client.list_ips().await;
            match read {
                Ok(list) => assert!(fits && list.covers("203.0.113.7".parse().expect("ip"))),
                Err(e) => assert!(
                    !fits && matches!(&e, ApiError::Malformed(why) if why.contains("exceeds")),
                    "{size} bytes: {e}"
                ),
            }
        }
    }

    #[tokio::test]
    async fn an_added_address_is_listed_and_a_second_add_is_a_duplicate() {
        let api = api_on("127.0.0.1:0").await;
        let client =
            Client::direct(&settings(api.addr), &credentials(), Family::V4, None).expect("client");
        let ip: IpAddr = "203.0.113.7".parse().expect("ip");
        assert_eq!(client.add_ip(ip).await.expect("added"), Added::New);
        assert_eq!(client.add_ip(ip).await.expect("listed"), Added::Duplicate);
        let whitelist = client.list_ips().await.expect("list");
        assert!(whitelist.covers(ip), "{whitelist}");
        api.shutdown();
    }

    #[tokio::test]
    async fn the_apis_message_is_cut_to_one_line_of_128_characters_without_the_key() {
        let message = format!(
            "{}\n\u{1b}[31m {KEY} {} {}",
            "a".repeat(20),
            url::form_urlencoded::byte_serialize(KEY.as_bytes()).collect::<String>(),
            "b".repeat(300)
        );
        let body = serde_json::json!({ "status": -8, "message": message, "details": null });
        let addr =
            harness::fixed_http("127.0.0.1:0", body.to_string().into_bytes(), Duration::ZERO).await;
        let client =
            Client::direct(&settings(addr), &credentials(), Family::V4, None).expect("client");
        let e = client.list_ips().await.expect_err("refused");
        let ApiError::Refused { status, message } = &e else {
            panic!("{e}");
        };
        assert_eq!(*status, super::super::api::ApiStatus::AuthenticationFailed);
        // 128 characters of the redacted text (20 a, a newline, an escape, "[31m ", two
        // markers and their blanks, then b), the two control characters written out.
        let expected = format!(
            "{}\\n\\u{{1b}}[31m [REDACTED] [REDACTED] {}…",
            "a".repeat(20),
            "b".repeat(128 - 20 - 2 - 5 - 2 * 11)
        );
        assert_eq!(message, &expected);
        assert!(!e.to_string().contains("k3y"), "{e}");
    }
}
