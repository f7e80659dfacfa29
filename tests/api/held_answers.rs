//! Plain answers held for clients that do not take them, bounded together
//! by `server.max_answer_bytes_total`: an answer that finds no room waits
//! for some (the provider's connection unread meanwhile), and ends its
//! request with 503 when none comes before the provider's deadline.
//! `kimi-k2.6` is served by Moonshot then Agentsflare.

use crate::helpers::*;
use crate::raw_client::chat_request;
use kimi_gateway::mock::Flavour;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Room for one 16 MB answer and a little more: a second finds none.
const ROOM_FOR_ONE: &str =
    "[server]\nmax_response_bytes = 20000000\nmax_answer_bytes_total = 20000000\n";

/// Asks for a 16 MB plain answer: more than every socket buffer between
/// the gateway and a client that does not read holds, so the gateway
/// holds the rest.
const LARGE: &str = "[mock chunk_bytes=16000000]";

/// A client that asks for a large answer and reads none of it.
async fn stalled_client(app: &TestApp) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(app.addr).await.unwrap();
    let body = chat_body("kimi-k2.6", LARGE, false).to_string();
    stream
        .write_all(chat_request(&body).as_bytes())
        .await
        .unwrap();
    wait_until("the answer is held", async || {
        app.state.answer_budget.held() >= 16_000_000
    })
    .await;
    stream
}

#[tokio::test]
async fn an_answer_without_room_waits_until_a_client_lets_its_answer_go() {
    let app = spawn_app_with(ROOM_FOR_ONE, &[]).await;
    let stalled = stalled_client(&app).await;

    let second = tokio::spawn({
        let client = app.client.clone();
        let url = app.url("/v1/chat/completions");
        async move {
            let response = client
                .post(url)
                .json(&chat_body("kimi-k2.6", LARGE, false))
                .send()
                .await
                .unwrap();
            let status = response.status();
            (status, response.bytes().await.unwrap().len())
        }
    });
    wait_until("the second answer waits for room", async || {
        app.state.answer_budget.waits() == 1
    })
    .await;
    assert!(
        app.state.answer_budget.held() <= 20_000_000,
        "{} bytes held",
        app.state.answer_budget.held()
    );
    assert!(!second.is_finished(), "answered without room");

    // The stalled client leaves: its answer is dropped, the second gets
    // the room and its whole answer.
    drop(stalled);
    let (status, length) = second.await.unwrap();
    assert_eq!(status, 200);
    assert!(length > 16_000_000, "{length} bytes");
    wait_until("every answer's bytes are given back", async || {
        app.state.answer_budget.held() == 0
    })
    .await;
    assert_eq!(app.mock.requests_for(Flavour::Agentsflare).len(), 0);

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("kimi_gateway_answer_waits_total 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("kimi_gateway_answer_bytes_max 20000000\n"));
}

#[tokio::test]
async fn an_answer_that_finds_no_room_in_time_ends_its_request_with_503() {
    let config = format!(
        "{ROOM_FOR_ONE}[providers.moonshot.timeouts]\nfirst_byte_secs = 60\ntotal_secs = 1\n"
    );
    let app = spawn_app_with(&config, &[]).await;
    let stalled = stalled_client(&app).await;
    let held = app.state.answer_budget.held();

    let response = app.chat(chat_body("kimi-k2.6", LARGE, false)).await;
    assert_eq!(response.status(), 503);
    let headers = response.headers().clone();
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(
        headers["x-gateway-attempts"], "1",
        "another provider's answer would find no room either"
    );
    let error = error_of(response).await;
    assert_eq!(error["code"], "gateway_out_of_resources");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("server.max_answer_bytes_total"),
        "{message}"
    );
    assert_eq!(app.mock.requests_for(Flavour::Agentsflare).len(), 0);
    assert_eq!(
        app.state.answer_budget.held(),
        held,
        "what the refused answer had claimed is given back"
    );
    drop(stalled);
}

/// Answers read at once that together need more than the total, each
/// alone fitting, take turns: none waits on the others' half-read
/// answers until its provider's deadline, and none fails.
#[tokio::test]
async fn answers_read_together_past_the_total_take_turns() {
    let app = spawn_app_with(
        "[server]\nmax_response_bytes = 1048576\nmax_answer_bytes_total = 1048576\n\
         [providers.moonshot.timeouts]\nfirst_byte_secs = 30\ntotal_secs = 30\n",
        &[],
    )
    .await;
    let started = std::time::Instant::now();
    let answers = (0..16).map(|i| {
        let content = format!("{i} [mock chunk_bytes=400000]");
        app.chat(chat_body("kimi-k2.6", &content, false))
    });
    for response in futures_util::future::join_all(answers).await {
        assert_eq!(response.status(), 200);
        assert!(response.bytes().await.unwrap().len() > 400_000);
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "answers waited {:?} on each other",
        started.elapsed()
    );
    wait_until("every answer's bytes are given back", async || {
        app.state.answer_budget.held() == 0
    })
    .await;
}
