//! Binding the gateway's listeners: a connection backlog fit for bursts,
//! and a bounded kernel send buffer for the connections accepted.
//!
//! `tokio::net::TcpListener::bind` asks the kernel for a backlog of 128
//! (the standard library's value). When more clients than that connect at
//! once, as a fleet does after a deploy or a network blip, the kernel drops
//! the SYNs beyond the queue and each of those clients waits out a 1 s (then
//! 3 s) retransmission before it is even accepted. nginx asks for 511 and Go
//! for the kernel's maximum; the gateway asks for [`BACKLOG`], which the
//! kernel caps at `net.core.somaxconn` (4096 by default since Linux 5.4).
//!
//! Linux grows a connection's send buffer on its own, up to
//! `net.ipv4.tcp_wmem`'s largest (4 MiB by default), and a client that
//! stops reading leaves it full: megabytes per connection that the gateway
//! does not hold but its container's memory accounting (cgroup v2) charges
//! it for (`server.client_send_buffer_bytes`). A size set on the listening
//! socket is copied to every connection it accepts, with the lock that
//! stops the kernel from growing it; set before `listen`, so no connection
//! is accepted without it, and accepting costs no call more.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel may queue before the gateway accepts them.
pub const BACKLOG: u32 = 4096;

/// Binds `addr` (with `SO_REUSEADDR`, as tokio's `bind` does, so a restart
/// can rebind while old connections linger in TIME_WAIT) and listens with
/// [`BACKLOG`]; with `send_buffer`, the connections it accepts have that
/// send buffer (see [`size_send_buffers`]). A failure names the address
/// (`Address already in use` alone does not say which listener).
pub fn bind(addr: SocketAddr, send_buffer: Option<usize>) -> std::io::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        if let Some(asked) = send_buffer {
            let kernel_gives = size_send_buffers(&socket, asked)?;
            tracing::info!(asked, kernel_gives, "client send buffers sized");
        }
        socket.bind(addr)?;
        socket.listen(BACKLOG)
    };
    listen()
        .map_err(|err| std::io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))
}

/// Asks for send buffers of `bytes` on `socket` and returns what the kernel
/// gives: Linux doubles what is asked (the other half is its bookkeeping)
/// and caps what is asked at `net.core.wmem_max`.
pub fn size_send_buffers(socket: &TcpSocket, bytes: usize) -> std::io::Result<u32> {
    // The configuration keeps it within a C int, the option's type.
    socket.set_send_buffer_size(u32::try_from(bytes).unwrap_or(u32::MAX))?;
    socket.send_buffer_size()
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
        let listener = bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
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
        let taken = bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
        let addr = taken.local_addr().unwrap();
        let err = bind(addr, None).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on {addr}: ")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn accepted_connections_have_the_send_buffer_asked_for() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), Some(64 * 1024)).unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (accepted, _) = accepted.unwrap();
        let given = send_buffer_of(accepted);
        assert!((64 * 1024..=128 * 1024).contains(&given), "{given}");
        // The client's own buffer is the kernel's: the cap is the
        // listener's, not the system's.
        assert_ne!(send_buffer_of(client.unwrap()), given);
    }

    fn send_buffer_of(stream: tokio::net::TcpStream) -> u32 {
        TcpSocket::from_std_stream(stream.into_std().unwrap())
            .send_buffer_size()
            .unwrap()
    }
}
