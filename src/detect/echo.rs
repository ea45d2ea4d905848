//! HTTP(S) echo providers: plain text, a Cloudflare-trace body, or JSON with an `ip` field.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::{Family, IpSource, LookupFuture, ProviderError};

/// An echo answer is one address; anything bigger is not an echo service.
pub(crate) const MAX_ECHO_BYTES: usize = 1024;

/// The clients every HTTP provider shares, one per family, each bound to that family's
/// unspecified address. Built once per detector: a client carries its own TLS root store.
pub(crate) struct EchoClients {
    v4: Result<reqwest::Client, String>,
    v6: Result<reqwest::Client, String>,
}

impl EchoClients {
    pub(crate) fn new(timeout: Duration) -> Self {
        let client = |family: Family| {
            // No kept-alive connections: one opened before an egress change may still leave
            // through the old route and report the old address.
            crate::http::client_builder(timeout, Some(family.unspecified()))
                .pool_max_idle_per_host(0)
                .build()
                .map_err(crate::http::describe)
        };
        EchoClients {
            v4: client(Family::V4),
            v6: client(Family::V6),
        }
    }

    fn get(&self, family: Family) -> Result<&reqwest::Client, ProviderError> {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
        .as_ref()
        .map_err(|e| ProviderError::Failed(e.clone()))
    }
}

pub(crate) struct HttpEcho {
    url: Url,
    clients: Arc<EchoClients>,
}

impl HttpEcho {
    pub(crate) fn new(url: Url, clients: Arc<EchoClients>) -> Self {
        HttpEcho { url, clients }
    }

    async fn ask(&self, family: Family) -> Result<IpAddr, ProviderError> {
        let response = self
            .clients
            .get(family)?
            .get(self.url.clone())
            .send()
            .await
            .map_err(|e| ProviderError::Failed(crate::http::describe(e)))?;
        let status = response.status().as_u16();
        match status {
            200..=299 => {}
            403 | 429 => return Err(ProviderError::Throttled(format!("HTTP {status}"))),
            _ => return Err(ProviderError::Failed(format!("HTTP {status}"))),
        }
        let body = crate::http::read_capped(response, MAX_ECHO_BYTES)
            .await
            .map_err(|e| ProviderError::Failed(e.to_string()))?;
        parse_echo(&body).map_err(ProviderError::Failed)
    }
}

impl IpSource for HttpEcho {
    fn lookup(&self, family: Family) -> LookupFuture<'_> {
        Box::pin(self.ask(family))
    }
}

/// Reads the one address an echo body holds.
pub(crate) fn parse_echo(body: &[u8]) -> Result<IpAddr, String> {
    let text = std::str::from_utf8(body).map_err(|_| "a body that is not text".to_owned())?;
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(ip);
    }
    if text.starts_with('{') {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|_| "a body that is not valid JSON".to_owned())?;
        return value
            .get("ip")
            .and_then(|v| v.as_str())
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| "JSON without an address in its \"ip\" field".to_owned());
    }
    let trace: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ip="))
        .collect();
    match trace.as_slice() {
        [one] => one
            .trim()
            .parse()
            .map_err(|_| "an ip= line that is not an address".to_owned()),
        [] => Err("a body that is not an address".to_owned()),
        _ => Err("more than one ip= line".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_formats() {
        assert_eq!(
            parse_echo(b"203.0.113.9\n"),
            Ok("203.0.113.9".parse().unwrap())
        );
        assert_eq!(
            parse_echo(b"{\"ip\":\"2001:db8::5\"}"),
            Ok("2001:db8::5".parse().unwrap())
        );
        let trace = b"fl=1\nh=1.1.1.1\nip=198.51.100.4\nts=1\nvisit_scheme=https\n";
        assert_eq!(parse_echo(trace), Ok("198.51.100.4".parse().unwrap()));
    }

    /// An echo server on loopback that keeps every connection open for more requests, as a
    /// real one does, and counts the connections it accepted.
    async fn keep_alive_echo(answer: &'static str) -> (Url, Arc<std::sync::atomic::AtomicU32>) {
        use std::sync::atomic::{AtomicU32, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = Url::parse(&format!(
            "http://{}/ip",
            listener.local_addr().expect("addr")
        ))
        .expect("url");
        let accepted = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buffer = [0u8; 1024];
                    while let Ok(read @ 1..) = stream.read(&mut buffer).await {
                        request.extend_from_slice(&buffer[..read]);
                        while let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                            request.drain(..end + 4);
                            let response = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                                answer.len()
                            );
                            if stream.write_all(response.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, accepted)
    }

    #[tokio::test]
    async fn every_lookup_opens_a_connection_of_its_own() {
        let (url, accepted) = keep_alive_echo("198.51.100.4\n").await;
        let echo = HttpEcho::new(url, Arc::new(EchoClients::new(Duration::from_secs(5))));
        for lookup in 1..=3 {
            assert_eq!(
                echo.lookup(Family::V4).await,
                Ok("198.51.100.4".parse().expect("ip"))
            );
            // A connection kept from before an egress change could still leave by the old
            // route: none is reused.
            assert_eq!(
                accepted.load(std::sync::atomic::Ordering::SeqCst),
                lookup,
                "connections after {lookup} lookups"
            );
        }
    }

    #[test]
    fn garbage_is_rejected() {
        for body in [
            &b"<html><body>hello</body></html>"[..],
            b"203.0.113.9 203.0.113.10",
            b"ip=1.2.3.4\nip=5.6.7.8",
            b"{\"address\":\"1.2.3.4\"}",
            b"\xff\xfe",
            b"",
        ] {
            assert!(parse_echo(body).is_err(), "{body:?}");
        }
    }
}
