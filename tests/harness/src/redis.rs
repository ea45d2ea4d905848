//! A throwaway `redis-server` on a loopback port, without persistence.

use tokio::process::Command;

use crate::child::Watched;
use crate::servers::wait_for_port;
use crate::tools::{free_port, require_tool};

/// A `redis-server` child; killed and checked on drop.
pub struct RedisServer {
    child: Option<Watched>,
    pub port: u16,
}

impl RedisServer {
    /// None (after `require_tool` recorded NOT RUN) when redis-server is missing outside CI.
    pub async fn start() -> Option<RedisServer> {
        require_tool("redis-server")?;
        let mut server = RedisServer {
            child: None,
            port: free_port(),
        };
        server.restart().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The server's process id, to stop and continue it (SIGSTOP, SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|child| child.id())
            .expect("redis-server is running")
    }

    /// Killed, as in a crash.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await;
        }
    }

    /// On the same port, empty, as after a crash of a server without persistence.
    pub async fn restart(&mut self) {
        self.stop().await;
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "no", "--protected-mode", "no"]);
        self.child = Some(Watched::spawn(format!("redis-server on {port}"), command));
        wait_for_port(([127, 0, 0, 1], self.port).into()).await;
    }
}
