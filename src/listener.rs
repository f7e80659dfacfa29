//! Binding the gateway's listeners with a connection backlog fit for bursts.
//!
//! `tokio::net::TcpListener::bind` asks the kernel for a backlog of 128
//! (the standard library's value). When more clients than that connect at
//! once, as a fleet does after a deploy or a network blip, the kernel drops
//! the SYNs beyond the queue and each of those clients waits out a 1 s (then
//! 3 s) retransmission before it is even accepted. nginx asks for 511 and Go
//! for the kernel's maximum; the gateway asks for [`BACKLOG`], which the
//! kernel caps at `net.core.somaxconn` (4096 by default since Linux 5.4).

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel may queue before the gateway accepts them.
pub const BACKLOG: u32 = 4096;

/// Binds `addr` (with `SO_REUSEADDR`, as tokio's `bind` does, so a restart
/// can rebind while old connections linger in TIME_WAIT) and listens with
/// [`BACKLOG`]. A failure names the address (`Address already in use`
/// alone does not say which listener).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen()
        .map_err(|err| std::io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Connections the test opens at once, without accepting any: well
    /// above the 128 a default listener queues, below `BACKLOG`.
    const BURST: usize = 600;

    #[tokio::test]
    async fn a_burst_of_connections_is_queued_not_dropped() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..BURST).map(|_| tokio::net::TcpStream::connect(addr));
        // A connection beyond the queue is only retried after ~1 s: every
        // one completing well within that means none was dropped.
        let all = tokio::time::timeout(
            Duration::from_millis(900),
            futures_util::future::join_all(connects),
        )
        .await
        .expect("every connection of the burst was queued at once");
        assert!(all.iter().all(Result::is_ok));
        drop(listener);
    }

    #[tokio::test]
    async fn a_taken_address_is_named_in_the_error() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{err}"
        );
    }
}
