//! `kimi-gateway healthcheck`: asks a running gateway's `/healthz` and exits
//! 0 on 200. Container images have no shell or curl, so the binary probes
//! itself; plain std networking keeps it independent of the async runtime.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Probes `http://{addr}{path}`; a wildcard address is probed on loopback.
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), String> {
    let mut addr = addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connect {addr}: {}", described(&e, timeout)))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {}", described(&e, timeout)))?;
    let head = status_line(&mut stream, timeout)?;
    let status_line = String::from_utf8_lossy(&head);
    if status_line.starts_with("HTTP/1.1 200") || status_line.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!(
            "unhealthy: {}",
            status_line.lines().next().unwrap_or("no answer")
        ))
    }
}

/// The answer's first line (or its first 64 bytes), however many reads it
/// comes in, within `timeout` in all.
fn status_line(stream: &mut TcpStream, timeout: Duration) -> Result<Vec<u8>, String> {
    const ENOUGH: usize = 64;
    let deadline = Instant::now() + timeout;
    let mut head = Vec::with_capacity(ENOUGH);
    let mut buffer = [0u8; ENOUGH];
    while head.len() < ENOUGH && !head.contains(&b'\n') {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("read: no answer within {timeout:?}"));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {}", described(&e, timeout))),
        }
    }
    Ok(head)
}

/// An I/O error as the probe reports it: a socket timeout (which the OS
/// reports as "Resource temporarily unavailable") says it timed out.
fn described(err: &std::io::Error, timeout: Duration) -> String {
    use std::io::ErrorKind::{TimedOut, WouldBlock};
    match err.kind() {
        TimedOut | WouldBlock => format!("no answer within {timeout:?}"),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A status line that arrives a byte at a time is still read whole.
    #[test]
    fn a_status_line_split_across_packets_is_read_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).unwrap();
            conn.set_nodelay(true).unwrap();
            // The probe hangs up once it has the status line.
            for byte in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" {
                if conn.write_all(&[*byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        assert_eq!(probe(addr, "/healthz", Duration::from_secs(5)), Ok(()));
        server.join().unwrap();
    }

    /// A gateway that accepts but never answers is reported as timed out.
    #[test]
    fn no_answer_is_reported_as_a_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reason = probe(addr, "/healthz", Duration::from_millis(200)).unwrap_err();
        assert_eq!(reason, "read: no answer within 200ms");
        drop(listener);
    }
}
