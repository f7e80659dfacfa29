//! A `rediss://` URL whose TLS handshake failed or got no answer: whether
//! its port speaks plain Redis instead. A plain Redis takes the TLS hello
//! for the start of a command and waits for the rest, so the handshake
//! only times out, which looks like an outage; asked `PING` in plain text,
//! it answers at once. A scheme changed by mistake is then a refusal the
//! reload reports, not an outage it rides into.

use redis::ConnectionAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a reload reports when the TLS port answers plain Redis.
pub const PLAIN_REDIS: &str = "the rediss:// URL's port answers plain Redis, not TLS \
     (use redis://, or the port Redis serves TLS on)";

/// [`PLAIN_REDIS`] as the error of a failed connection.
pub fn error() -> redis::RedisError {
    std::io::Error::other(PLAIN_REDIS).into()
}

/// Whether `addr`, a TLS address, answers a plain-text `PING` with a Redis
/// reply (`+PONG`, or an error such as `-NOAUTH`) within `within`.
pub async fn speaks_plain_redis(addr: &ConnectionAddr, within: Duration) -> bool {
    let ConnectionAddr::TcpTls { host, port, .. } = addr else {
        return false;
    };
    let probe = async {
        let mut stream = TcpStream::connect((host.as_str(), *port)).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await.ok()?;
        Some(first[0])
    };
    // A TLS server answers bytes that are no handshake with an alert
    // record (0x15) or by closing; only Redis answers with `+` or `-`.
    matches!(
        tokio::time::timeout(within, probe).await,
        Ok(Some(b'+' | b'-'))
    )
}
