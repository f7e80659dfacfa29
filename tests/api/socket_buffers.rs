//! Kernel socket buffers, bounded: what the kernel queues for a client
//! that does not read (`server.client_send_buffer_bytes`) and what it
//! queues from a provider the gateway stops reading
//! (`providers.NAME.receive_buffer_bytes`) stay near the sizes asked for,
//! not megabytes. Read from `/proc/net/tcp`: a connection's bytes sent and
//! not yet acknowledged (`tx_queue`), and its bytes received and not yet
//! read (`rx_queue`). `kimi-k2.6` is served by Moonshot first.

use crate::helpers::*;
use crate::raw_client::chat_request;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An 8 MB plain answer: more than the kernel queues for a client that
/// does not read, capped or not.
const LARGE: &str = "[mock chunk_bytes=8000000]";

/// A 12 MB stream sent as fast as the gateway takes it.
const LONG_STREAM: &str = "[mock chunks=3000 chunk_bytes=4000]";

/// Sends a request for `content` and reads none of the answer.
async fn stalled_client(app: &TestApp, content: &str, stream: bool) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(app.addr).await.unwrap();
    let body = chat_body("kimi-k2.6", content, stream).to_string();
    client
        .write_all(chat_request(&body).as_bytes())
        .await
        .unwrap();
    client
}

/// One row of `/proc/net/tcp`: local and remote port, `tx_queue`,
/// `rx_queue`.
fn connections() -> Vec<(u16, u16, usize, usize)> {
    let hex = |text: &str| usize::from_str_radix(text, 16).unwrap();
    let port = |address: &str| u16::try_from(hex(address.rsplit(':').next().unwrap())).unwrap();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = fields[4].split_once(':').unwrap();
            (port(fields[1]), port(fields[2]), hex(tx), hex(rx))
        })
        .collect()
}

/// Bytes the kernel holds sent and unacknowledged on the gateway's side
/// of the connection from `client` to `gateway`.
/// (0 when a read of the table missed it: the callers wait for more.)
fn send_queue(gateway: SocketAddr, client: SocketAddr) -> usize {
    connections()
        .into_iter()
        .find(|&(local, remote, _, _)| local == gateway.port() && remote == client.port())
        .map_or(0, |(_, _, tx, _)| tx)
}

/// Bytes the kernel holds received and unread on the gateway's
/// connections to `provider` (the largest).
fn receive_queue(provider: SocketAddr) -> usize {
    connections()
        .into_iter()
        .filter(|&(_, remote, _, _)| remote == provider.port())
        .map(|(_, _, _, rx)| rx)
        .max()
        .unwrap_or(0)
}

/// Waits until `queue` reads the same three times in a row, 20 ms apart,
/// and returns it.
async fn steady(what: &str, mut queue: impl FnMut() -> usize) -> usize {
    let mut seen = Vec::new();
    wait_until(what, async || {
        seen.push(queue());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        seen.len() >= 3 && seen[seen.len() - 3..].windows(2).all(|w| w[0] == w[1])
    })
    .await;
    *seen.last().unwrap()
}

#[tokio::test]
async fn a_client_that_does_not_read_has_about_twice_the_default_buffer_queued() {
    // The default `server.client_send_buffer_bytes`.
    const ASKED: usize = 256 * 1024;
    let app = spawn_app().await;
    let client = stalled_client(&app, LARGE, false).await;
    let local = client.local_addr().unwrap();
    wait_until("the kernel's queue for the client fills", async || {
        send_queue(app.addr, local) >= ASKED
    })
    .await;
    let queued = steady("the queue stops growing", || send_queue(app.addr, local)).await;
    // Linux doubles what is asked (half is its bookkeeping), and the
    // write that finds room may add a packet of up to 64 KiB past it.
    assert!(queued <= 2 * ASKED + 64 * 1024, "{queued} bytes queued");
    drop(client);
}

#[tokio::test]
async fn without_a_send_buffer_the_kernel_grows_the_queue_past_it() {
    let app = spawn_app_with("[server]\nclient_send_buffer_bytes = 0\n", &[]).await;
    let client = stalled_client(&app, LARGE, false).await;
    let local = client.local_addr().unwrap();
    // Well past what the capped test bounds: the measure above can fail.
    wait_until("the kernel's queue passes 1 MiB", async || {
        send_queue(app.addr, local) > 1024 * 1024
    })
    .await;
    drop(client);
}

/// A provider connection that carried a large answer fast has had its
/// receive buffer grown by the kernel, unless a size was asked for; then
/// a stream its client does not read stops the gateway reading it, and
/// the kernel queues what the provider sends meanwhile.
async fn provider_queue_behind_a_stalled_stream(config: &str) -> usize {
    let app = spawn_app_with(config, &[]).await;
    // Warms the one pooled connection: 16 MB read as fast as it comes.
    let mut warm = TcpStream::connect(app.addr).await.unwrap();
    let body = chat_body("kimi-k2.6", "[mock chunk_bytes=16000000]", false).to_string();
    warm.write_all(chat_request(&body).as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buffer = vec![0; 1 << 20];
    while answer.len() < 16_000_000 {
        let n = warm.read(&mut buffer).await.unwrap();
        assert!(n > 0, "the answer ended early");
        answer.extend_from_slice(&buffer[..n]);
    }
    drop(warm);
    let client = stalled_client(&app, LONG_STREAM, true).await;
    let provider = app.mock.addr;
    wait_until("the provider's bytes queue up", async || {
        receive_queue(provider) > 16 * 1024
    })
    .await;
    let queued = steady("the provider's queue stops growing", || {
        receive_queue(provider)
    })
    .await;
    drop(client);
    queued
}

#[tokio::test]
async fn a_provider_the_gateway_stops_reading_has_about_twice_its_buffer_queued() {
    const ASKED: usize = 64 * 1024;
    let config = format!("[providers.moonshot]\nreceive_buffer_bytes = {ASKED}\n");
    let queued = provider_queue_behind_a_stalled_stream(&config).await;
    assert!(queued <= 2 * ASKED + 64 * 1024, "{queued} bytes queued");
}

#[tokio::test]
async fn a_provider_connection_has_the_default_receive_buffer() {
    // The default `providers.NAME.receive_buffer_bytes`.
    const ASKED: usize = 256 * 1024;
    let queued = provider_queue_behind_a_stalled_stream("").await;
    assert!(queued <= 2 * ASKED + 64 * 1024, "{queued} bytes queued");
}

#[tokio::test]
async fn without_a_receive_buffer_a_warmed_provider_connection_queues_more() {
    let config = "[providers.moonshot]\nreceive_buffer_bytes = 0\n";
    let queued = provider_queue_behind_a_stalled_stream(config).await;
    // Well past what the capped test bounds: the measure can fail.
    assert!(queued > 512 * 1024, "{queued} bytes queued");
}
