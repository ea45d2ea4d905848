//! Small servers a test controls, on loopback or a test network's address: a liar, a slow or
//! garbage provider, a redirecting API, a fake proxy, a trap for stray traffic, an echo whose
//! answer changes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Everything a raw server was sent, all connections together.
pub type Recorded = Arc<Mutex<Vec<u8>>>;

/// An HTTP server on `bind` that answers every request with `body` after `delay`.
pub async fn fixed_http(bind: &str, body: Vec<u8>, delay: Duration) -> SocketAddr {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    raw_server(bind, [head.into_bytes(), body].concat(), delay)
        .await
        .0
}

/// A TCP server that answers every connection with `response` after `delay`, and records
/// what it was sent.
pub async fn raw_server(bind: &str, response: Vec<u8>, delay: Duration) -> (SocketAddr, Recorded) {
    let listener = TcpListener::bind(bind).await.expect("bind raw server");
    let addr = listener.local_addr().expect("addr");
    let recorded = Recorded::default();
    let record = Arc::clone(&recorded);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let response = response.clone();
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let read = stream.read(&mut request).await.unwrap_or(0);
                record
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend_from_slice(&request[..read]);
                tokio::time::sleep(delay).await;
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, recorded)
}

/// Waits until something accepts connections on `addr`, or panics after 10 s.
pub async fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An echo provider whose answer the test changes: an egress IP change without a network.
pub struct SwitchableEcho {
    pub addr: SocketAddr,
    answer: Arc<Mutex<String>>,
}

impl SwitchableEcho {
    pub async fn start(ip: &str) -> SwitchableEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let addr = listener.local_addr().expect("echo addr");
        let answer = Arc::new(Mutex::new(ip.to_owned()));
        let shared = Arc::clone(&answer);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let ip = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 1024];
                    let _ = stream.read(&mut request).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{ip}",
                        ip.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        SwitchableEcho { addr, answer }
    }

    pub fn switch_to(&self, ip: &str) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = ip.to_owned();
    }
}
