//! A private `redis-server` per test: a free loopback port, no persistence,
//! killed when dropped (or earlier, to play an outage), or paused to play
//! a stall; over TLS only, with a certificate of its own, when asked.

use redis::AsyncCommands;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    /// Over TLS: the certificate's directory, and the certificate (PEM),
    /// which is its own authority.
    tls: Option<(tempfile::TempDir, Vec<u8>)>,
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(None).await
    }

    /// A server that speaks TLS only, with a self-signed certificate for
    /// `localhost` and `127.0.0.1` (see [`RedisServer::certificate`]).
    pub async fn start_tls() -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        let pem = cert.cert.pem().into_bytes();
        std::fs::write(dir.path().join("cert.pem"), &pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.key_pair.serialize_pem()).unwrap();
        Self::start_with(Some((dir, pem))).await
    }

    /// A free port is found by binding port 0 and letting it go, so another
    /// test may take it before `redis-server` binds it: a server that exits
    /// at start, or a PING answered by another process, means another port.
    async fn start_with(mut tls: Option<(tempfile::TempDir, Vec<u8>)>) -> RedisServer {
        for _ in 0..5 {
            match Self::try_start(tls.take()).await {
                Ok(server) => return server,
                Err(returned) => tls = returned,
            }
        }
        panic!("redis-server did not start on any of five ports");
    }

    async fn try_start(
        tls: Option<(tempfile::TempDir, Vec<u8>)>,
    ) -> Result<RedisServer, Option<(tempfile::TempDir, Vec<u8>)>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
            .to_string();
        let mut command = Command::new("redis-server");
        match &tls {
            None => command.args(["--port", &port]),
            Some((dir, _)) => {
                let file = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
                command
                    .args(["--port", "0", "--tls-port", &port])
                    .args(["--tls-cert-file", &file("cert.pem")])
                    .args(["--tls-key-file", &file("key.pem")])
                    .args(["--tls-ca-cert-file", &file("cert.pem")])
                    .args(["--tls-auth-clients", "no"])
            }
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server not found: install it (apt-get install redis-server) or run scripts/test.sh");
        let pid = child.id();
        let mut server = RedisServer {
            child: Some(child),
            port: port.parse().unwrap(),
            tls,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let exited = server.child.as_mut().map(|c| c.try_wait());
            if matches!(exited, Some(Ok(Some(_)))) {
                // It could not bind the port: another test has it.
                server.child = None;
                return Err(server.tls.take());
            }
            if let Ok(mut conn) = server.connection().await {
                let mut info = redis::cmd("INFO");
                if let Ok(info) = info.arg("server").query_async::<String>(&mut conn).await {
                    if info.contains(&format!("process_id:{pid}\r\n")) {
                        return Ok(server);
                    }
                    // Another test's server answered on the port.
                    return Err(server.tls.take());
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A TLS server's certificate (PEM), which is its own authority.
    pub fn certificate(&self) -> &[u8] {
        &self.tls.as_ref().expect("a TLS server").1
    }

    pub async fn connection(&self) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let client = match &self.tls {
            None => redis::Client::open(self.url())?,
            Some((_, pem)) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            )?,
        };
        client.get_multiplexed_async_connection().await
    }

    /// Members of a sorted set (concurrency leases).
    pub async fn zcard(&self, key: &str) -> usize {
        let mut conn = self.connection().await.unwrap();
        conn.zcard(key).await.unwrap()
    }

    /// Redis's clock, in milliseconds.
    pub async fn now_ms(&self) -> f64 {
        let mut conn = self.connection().await.unwrap();
        let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        secs as f64 * 1000.0 + micros as f64 / 1000.0
    }

    /// Freezes the server (`SIGSTOP`): connections stay open, commands wait
    /// unanswered, as on a stalled host.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again; it then answers what waited.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// Stops the server now: an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
