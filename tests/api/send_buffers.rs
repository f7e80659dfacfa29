//! `server.client_send_buffer_bytes`: what the kernel queues for a client
//! that does not read is bounded by the send buffer the gateway asks for,
//! not grown to megabytes. Read from the gateway's side of the connection
//! in `/proc/net/tcp` (its bytes sent and not yet acknowledged).

use crate::helpers::*;
use crate::raw_client::chat_request;
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// An 8 MB plain answer: more than the kernel queues for a client that
/// does not read, capped or not.
const LARGE: &str = "[mock chunk_bytes=8000000]";

/// Sends a request for a large answer and reads none of it.
async fn stalled_client(app: &TestApp) -> TcpStream {
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    let body = chat_body("kimi-k2.6", LARGE, false).to_string();
    stream
        .write_all(chat_request(&body).as_bytes())
        .await
        .unwrap();
    stream
}

/// Bytes the kernel holds sent and unacknowledged on the gateway's side
/// of the connection from `client` to `gateway` (`tx_queue`).
fn send_queue(gateway: SocketAddr, client: SocketAddr) -> usize {
    let port =
        |address: &str| u16::from_str_radix(address.rsplit(':').next().unwrap(), 16).unwrap();
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| port(fields[1]) == gateway.port() && port(fields[2]) == client.port())
        .map(|fields| usize::from_str_radix(fields[4].split(':').next().unwrap(), 16).unwrap())
        .expect("the gateway's side of the connection is listed")
}

#[tokio::test]
async fn a_client_that_does_not_read_has_at_most_twice_the_asked_buffer_queued() {
    const ASKED: usize = 64 * 1024;
    let app = spawn_app_with(
        &format!("[server]\nclient_send_buffer_bytes = {ASKED}\n"),
        &[],
    )
    .await;
    let client = stalled_client(&app).await;
    let local = client.local_addr().unwrap();
    wait_until("the kernel's queue for the client fills", async || {
        send_queue(app.addr, local) >= ASKED
    })
    .await;
    // Steady: the same three reads in a row, 20 ms apart.
    let mut seen = Vec::new();
    wait_until("the queue stops growing", async || {
        seen.push(send_queue(app.addr, local));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        seen.len() >= 3 && seen[seen.len() - 3..].windows(2).all(|w| w[0] == w[1])
    })
    .await;
    let queued = *seen.last().unwrap();
    // Linux doubles what is asked (half is its bookkeeping), and the
    // write that finds room may add a packet of up to 64 KiB past it.
    assert!(queued <= 2 * ASKED + 64 * 1024, "{queued} bytes queued");
    drop(client);
}

#[tokio::test]
async fn without_a_cap_the_kernel_grows_the_queue_past_it() {
    let app = spawn_app_with("[server]\nclient_send_buffer_bytes = 0\n", &[]).await;
    let client = stalled_client(&app).await;
    let local = client.local_addr().unwrap();
    // Well past what the capped test bounds: the measure above can fail.
    wait_until("the kernel's queue passes 1 MiB", async || {
        send_queue(app.addr, local) > 1024 * 1024
    })
    .await;
    drop(client);
}
