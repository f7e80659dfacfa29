//! The gateway's own limits under load: request body bytes held at once
//! (`server.max_body_bytes_total`, and by one key's requests,
//! `server.max_body_bytes_per_key`) and client connections open at once
//! (`server.max_connections`).

use crate::helpers::*;
use crate::raw_client::*;
use std::time::Duration;

const MODEL: &str = "kimi-k2-turbo-preview";

/// A chat request body of about `size` bytes.
fn large_body(size: usize) -> String {
    chat_body(MODEL, &"x".repeat(size), false).to_string()
}

/// Asserts the 503 a body that does not fit under the total gets.
fn assert_no_room(reply: &Reply) {
    assert_eq!(reply.status, 503, "{}: {}", reply.head, reply.text());
    let error = reply.json();
    assert_eq!(error["error"]["type"], "server_error", "{error}");
    assert_eq!(
        error["error"]["code"], "gateway_out_of_resources",
        "{error}"
    );
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.max_body_bytes_total"),
        "{error}"
    );
    assert_eq!(reply.header("retry-after"), Some("1"), "{}", reply.head);
    assert_eq!(
        reply.header("x-should-retry"),
        Some("true"),
        "{}",
        reply.head
    );
    assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
}

/// What a body read part-way holds of the total: the bytes it sent and
/// one large read's room (64 KiB).
const READ_ROOM: u64 = 64 * 1024;

#[tokio::test]
async fn bodies_past_the_total_are_refused_until_room_is_made() {
    let app = spawn_app_with(
        "[server]\nmax_body_bytes = 200000\nmax_body_bytes_total = 200000\nclient_idle_secs = 60\n",
        &[],
    )
    .await;
    let body = large_body(190_000);
    let request = chat_request(&body);
    let head_len = request.len() - body.len();
    let (head_and_some, rest) = request.split_at(head_len + 1000);

    // A client sends the head and the start of its body: it holds what it
    // sent and the next read's room, not the 190 KB it declared (a client
    // that trickles a large declared body holds little).
    let mut holder = Client::connect(app.addr).await;
    holder.send(head_and_some).await;
    wait_until("the first body's bytes are claimed", async || {
        app.state.body_budget.held() == 1000 + READ_ROOM
    })
    .await;

    // A body that would not fit beside it is refused before it is read.
    let refused_request = chat_request(&large_body(150_000));
    let mut refused = Client::connect(app.addr).await;
    refused.send(&refused_request).await;
    assert_no_room(&refused.response().await);

    // So is a chunk announcing that much, before its bytes come...
    let mut chunked = Client::connect(app.addr).await;
    chunked
        .send(format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{{\"model\"",
            150_000
        ))
        .await;
    assert_no_room(&chunked.response().await);

    // ...and a client waiting for `100 Continue` is answered without one.
    let mut expecting = Client::connect(app.addr).await;
    expecting
        .send(format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
            150_000
        ))
        .await;
    assert_no_room(&expecting.response().await);

    // A body over `max_body_bytes` is still 413, not 503.
    let mut too_large = Client::connect(app.addr).await;
    too_large
        .send("POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 10000000\r\n\r\n{")
        .await;
    let reply = too_large.response().await;
    assert_eq!(reply.status, 413, "{}: {}", reply.head, reply.text());

    // Bodies of up to 16 KiB are bounded by their connection, not held
    // against the total: one that came with its head, and one of 15 KB
    // (more than the connection's first read) go on; one of 60 KB is
    // claimed, and fits beside what the first body holds.
    let small = app.chat(chat_body(MODEL, "small", false)).await;
    assert_eq!(small.status(), 200);
    for size in [15_000, 60_000] {
        let mut client = Client::connect(app.addr).await;
        client.send(chat_request(&large_body(size))).await;
        let reply = client.response().await;
        assert_eq!(
            reply.status,
            200,
            "{size}: {}: {}",
            reply.head,
            reply.text()
        );
    }
    assert_eq!(app.state.body_budget.held(), 1000 + READ_ROOM);

    // The first body sends most of itself: it now holds its whole length,
    // and the 60 KB body no longer fits.
    let (more, rest) = rest.split_at(129_000);
    holder.send(more).await;
    wait_until("the first body holds its length", async || {
        app.state.body_budget.held() == body.len() as u64
    })
    .await;
    let mut over = Client::connect(app.addr).await;
    over.send(chat_request(&large_body(60_000))).await;
    assert_no_room(&over.response().await);

    // A request head past 16 KiB still arriving claims what it holds too:
    // no room.
    let mut long_head = Client::connect(app.addr).await;
    long_head
        .send(format!(
            "GET /v1/models HTTP/1.1\r\nhost: gateway\r\nx-long: {}\r\n",
            "a".repeat(20_000)
        ))
        .await;
    assert_no_room(&long_head.response().await);
    let metrics = scrape(&app).await;
    assert!(
        metrics.contains(&format!("kimi_gateway_request_body_bytes {}\n", body.len())),
        "{metrics}"
    );
    assert!(
        metrics.contains("kimi_gateway_request_body_bytes_max 200000\n"),
        "{metrics}"
    );
    assert_eq!(
        app.mock.requests().len(),
        3,
        "only the ones that fitted forwarded"
    );

    // The first body ends and is answered; its bytes are given back, and
    // the refused request, sent again, is served.
    holder.send(rest).await;
    let reply = holder.response().await;
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());
    wait_until("the first body is given back", async || {
        app.state.body_budget.held() == 0
    })
    .await;
    let mut again = Client::connect(app.addr).await;
    again.send(&refused_request).await;
    let reply = again.response().await;
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());
    assert_eq!(app.state.body_budget.held(), 0);
    // With room, a long head is served, and its claim given back.
    let mut long_head = Client::connect(app.addr).await;
    long_head
        .send(format!(
            "GET /v1/models HTTP/1.1\r\nhost: gateway\r\nx-long: {}\r\n\r\n",
            "a".repeat(20_000)
        ))
        .await;
    let reply = long_head.response().await;
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());
    assert_eq!(app.state.body_budget.held(), 0);
}

/// A chat request like [`chat_request`]'s, sent with client key `key`.
fn keyed_request(key: &str, body: &str) -> String {
    chat_request(body).replacen(
        "\r\n\r\n",
        &format!("\r\nauthorization: Bearer {key}\r\n\r\n"),
        1,
    )
}

/// Asserts the 429 a body that would take its key past its share gets.
fn assert_key_share_full(reply: &Reply) {
    assert_eq!(reply.status, 429, "{}: {}", reply.head, reply.text());
    let error = reply.json();
    assert_eq!(
        error["error"]["type"], "rate_limit_reached_error",
        "{error}"
    );
    assert_eq!(error["error"]["code"], "max_body_bytes_per_key", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("server.max_body_bytes_per_key"),
        "{error}"
    );
    assert_eq!(reply.header("retry-after"), Some("1"), "{}", reply.head);
    assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
}

/// One key's slow uploads cannot take the whole total: past its share
/// (by default all but one largest body) its own further bodies are
/// refused with 429, while another key's still fit.
#[tokio::test]
async fn one_keys_slow_uploads_leave_room_for_other_keys() {
    let app = spawn_app_with(
        "[server]\nmax_body_bytes = 100000\nmax_body_bytes_total = 250000\nclient_idle_secs = 60\n\
         [keys.greedy]\nsecret_env = \"GREEDY_KEY\"\n[keys.other]\nsecret_env = \"OTHER_KEY\"\n",
        &[
            ("GREEDY_KEY", Some("sk-greedy")),
            ("OTHER_KEY", Some("sk-other")),
        ],
    )
    .await;
    assert_eq!(app.state.config().server.max_body_bytes_per_key, 150_000);
    let body = large_body(60_000);

    // The greedy key starts two uploads and sends half of each: each holds
    // what it sent and one read's room (64 KiB), so its whole length, and
    // together they are under the key's share of 150,000.
    let mut holders = Vec::new();
    let mut rests = Vec::new();
    for expected in [1, 2] {
        let request = keyed_request("sk-greedy", &body);
        let (start, rest) = request.split_at(request.len() - body.len() + 30_000);
        let mut holder = Client::connect(app.addr).await;
        holder.send(start).await;
        wait_until("the upload's bytes are claimed", async || {
            app.state.body_budget.held_by("greedy") == expected * body.len() as u64
        })
        .await;
        holders.push(holder);
        rests.push(rest.to_string());
    }

    // A third of its bodies is refused before any of it is read: declared,
    // announced in a chunk, or awaiting `100 Continue`...
    let mut third = Client::connect(app.addr).await;
    third
        .send(keyed_request("sk-greedy", &large_body(40_000)))
        .await;
    assert_key_share_full(&third.response().await);
    let mut chunked = Client::connect(app.addr).await;
    chunked
        .send(format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer sk-greedy\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{{\"model\"",
            40_000
        ))
        .await;
    assert_key_share_full(&chunked.response().await);
    let mut expecting = Client::connect(app.addr).await;
    expecting
        .send(format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer sk-greedy\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
            40_000
        ))
        .await;
    assert_key_share_full(&expecting.response().await);
    // ...while the other key's body of the same size is served, and the
    // greedy key's small bodies (bounded by their connections) go on.
    let mut other = Client::connect(app.addr).await;
    other
        .send(keyed_request("sk-other", &large_body(40_000)))
        .await;
    let reply = other.response().await;
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());
    let mut small = Client::connect(app.addr).await;
    small
        .send(keyed_request("sk-greedy", &large_body(1_000)))
        .await;
    let reply = small.response().await;
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());

    // The uploads end and are answered; the key's bytes are given back and
    // its refused body, sent again, is served.
    for (holder, rest) in holders.iter_mut().zip(&rests) {
        holder.send(rest).await;
        let reply = holder.response().await;
        assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());
    }
    wait_until("the key's bytes are given back", async || {
        app.state.body_budget.held() == 0
    })
    .await;
    assert_eq!(app.state.body_budget.held_by("greedy"), 0);
    let mut again = Client::connect(app.addr).await;
    again
        .send(keyed_request("sk-greedy", &large_body(40_000)))
        .await;
    let reply = again.response().await;
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());
    let metrics = scrape(&app).await;
    assert!(
        metrics.contains("kimi_gateway_rate_limited_total{scope=\"key\"} 3\n"),
        "the three refusals counted as the key's: {metrics}"
    );
}

/// A request head past 16 KiB is held by its fields for as long as its
/// request is handled, and so is its claim; a body over 16 KiB that came
/// in the same reads is claimed and charged to its key like any other.
/// (Given back at the end of each request, a long head's claim let clients
/// hold connections x ~128 KiB with nothing counted.)
#[tokio::test]
async fn a_long_heads_request_keeps_its_claim_while_handled() {
    let app = spawn_app_with(
        "[server]\nmax_body_bytes = 100000\nmax_body_bytes_total = 250000\nclient_idle_secs = 60\n\
         [keys.team]\nsecret_env = \"TEAM_KEY\"\n",
        &[("TEAM_KEY", Some("sk-team"))],
    )
    .await;
    // Held by the provider long enough to be looked at.
    let body = chat_body(
        MODEL,
        &format!("{} [mock head_delay_ms=1500]", "x".repeat(18_000)),
        false,
    )
    .to_string();
    let request = keyed_request("sk-team", &body).replacen(
        "\r\n\r\n",
        &format!("\r\nx-long: {}\r\n\r\n", "a".repeat(40_000)),
        1,
    );
    // Most of the head first; once it is claimed, the rest of the head
    // with the whole body, which its buffer has room for by then.
    let (start, rest) = request.split_at(35_000);
    let mut client = Client::connect(app.addr).await;
    client.send(start).await;
    wait_until("the long head is claimed", async || {
        app.state.body_budget.held() > 0
    })
    .await;
    client.send(rest).await;
    wait_until("the request is with the provider", async || {
        !app.mock.requests().is_empty()
    })
    .await;
    let held = app.state.body_budget.held();
    assert!(
        held >= (40_000 + body.len()) as u64,
        "the head's buffer and the body: {held}"
    );
    assert!(
        app.state.body_budget.held_by("team") >= body.len() as u64,
        "the body is charged to its key: {}",
        app.state.body_budget.held_by("team")
    );
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());
    wait_until("everything is given back", async || {
        app.state.body_budget.held() == 0
    })
    .await;
    assert_eq!(app.state.body_budget.held_by("team"), 0);
    // The connection goes on with an ordinary request.
    client
        .send(keyed_request("sk-team", &large_body(100)))
        .await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());

    // A head of 16-32 KiB can come whole in one read (never part-way in
    // past 16 KiB): claimed all the same.
    let plain = chat_body(MODEL, "[mock head_delay_ms=1000]", false).to_string();
    let request = keyed_request("sk-team", &plain).replacen(
        "\r\n\r\n",
        &format!("\r\nx-long: {}\r\n\r\n", "a".repeat(20_000)),
        1,
    );
    let forwarded = app.mock.requests().len();
    let mut one_read = Client::connect(app.addr).await;
    one_read.send(&request).await;
    wait_until("the request is with the provider", async || {
        app.mock.requests().len() > forwarded
    })
    .await;
    assert!(
        app.state.body_budget.held() >= 20_000,
        "the head's buffer: {}",
        app.state.body_budget.held()
    );
    let reply = one_read.response().await;
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());
    wait_until("the head is given back", async || {
        app.state.body_budget.held() == 0
    })
    .await;

    // A stream's request id (and access record) are slices of the long
    // head's buffer until the stream ends: claimed until then.
    let stream = chat_body(MODEL, "[mock chunks=2 chunk_delay_ms=1500]", true).to_string();
    let request = keyed_request("sk-team", &stream).replacen(
        "\r\n\r\n",
        &format!(
            "\r\nx-request-id: req-long\r\nx-long: {}\r\n\r\n",
            "a".repeat(40_000)
        ),
        1,
    );
    client.send(&request).await;
    let (status, head) = client.head().await;
    assert_eq!(status, 200, "{head}");
    assert!(
        app.state.body_budget.held() >= 40_000,
        "the long head's buffer, while its stream lasts: {}",
        app.state.body_budget.held()
    );
    let (body, _) = client.chunked_body().await;
    assert!(String::from_utf8_lossy(&body).contains("[DONE]"));
    wait_until("the long head is given back", async || {
        app.state.body_budget.held() == 0
    })
    .await;
}

/// A request head past 16 KiB has 10 s to come whole: one trickled would
/// keep its share of the body budget, which every client shares, before
/// any key is known. (A paused clock: the wait is not spent.)
#[tokio::test(start_paused = true)]
async fn a_long_head_trickled_is_closed_after_its_wait() {
    let app = spawn_app_with("[server]\nclient_idle_secs = 60\n", &[]).await;
    let mut long_head = Client::connect(app.addr).await;
    long_head
        .send(format!(
            "GET /v1/models HTTP/1.1\r\nhost: gateway\r\nx-long: {}",
            "a".repeat(20_000)
        ))
        .await;
    wait_until("the long head is claimed", async || {
        app.state.body_budget.held() > 0
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncReadExt::read(&mut long_head.stream, &mut byte),
    )
    .await;
    assert!(matches!(read, Ok(Ok(0))), "closed, nothing sent: {read:?}");
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(9)..Duration::from_secs(11)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(app.state.body_budget.held(), 0);
}

/// Opens a connection and has one request answered on it, so the gateway
/// has accepted it; the connection stays open.
async fn accepted_connection(app: &TestApp) -> Client {
    let mut client = Client::connect(app.addr).await;
    client.send(HEALTHZ).await;
    assert_eq!(client.response().await.status, 200);
    client
}

async fn wait_for_open_connections(app: &TestApp, n: i64) {
    wait_until(&format!("{n} open connections"), async || {
        app.state.metrics.client_connections.get() == n
    })
    .await;
}

#[tokio::test]
async fn at_the_cap_idle_connections_close_to_make_room() {
    let app = spawn_app_with("[server]\nmax_connections = 2\n", &[]).await;
    let mut idle = [
        accepted_connection(&app).await,
        accepted_connection(&app).await,
    ];
    wait_for_open_connections(&app, 2).await;
    assert_eq!(app.state.metrics.client_connections_max.get(), 2);

    // A third waits in the backlog; the idle two are closed for it.
    let mut third = Client::connect(app.addr).await;
    third.send(HEALTHZ).await;
    assert_eq!(third.response().await.status, 200);
    for client in &mut idle {
        client.assert_closed().await;
    }
    wait_for_open_connections(&app, 1).await;

    // The cap fills again with idle connections within the second after
    // the open ones were told to close: they are told again once it has
    // passed, not left to the idle limit (75 s).
    let _fourth = accepted_connection(&app).await;
    let mut fifth = Client::connect(app.addr).await;
    fifth.send(HEALTHZ).await;
    assert_eq!(fifth.response().await.status, 200);
    third.assert_closed().await;
}

#[tokio::test]
async fn at_the_cap_busy_connections_are_waited_for_then_closed() {
    let app = spawn_app_with("[server]\nmax_connections = 2\n", &[]).await;
    let stream = chat_request(&chat_body(MODEL, "[mock gate=g chunks=3]", true).to_string());
    let mut streaming = [
        Client::connect(app.addr).await,
        Client::connect(app.addr).await,
    ];
    for client in &mut streaming {
        client.send(&stream).await;
        assert_eq!(client.head().await.0, 200);
    }
    wait_for_open_connections(&app, 2).await;

    let mut third = Client::connect(app.addr).await;
    third.send(HEALTHZ).await;
    // Not accepted while both streams run: nothing comes back.
    let early = tokio::time::timeout(Duration::from_millis(300), third.fill()).await;
    assert!(early.is_err(), "answered past the cap");

    // The streams end; their connections close after them (they were
    // told to when the cap was reached), and the third is served.
    app.mock.release("g", 100);
    for client in &mut streaming {
        let (body, _) = client.chunked_body().await;
        assert!(
            String::from_utf8_lossy(&body).contains("data: [DONE]"),
            "{body:?}"
        );
        client.assert_closed().await;
    }
    let reply = third.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
}

/// The start of a request head, never finished.
const HALF_A_HEAD: &str = "GET /healthz HTTP/1.1\r\nhost: gateway\r\n";

#[tokio::test]
async fn at_the_cap_heads_sent_slowly_are_closed_after_a_grace() {
    let app = spawn_app_with("[server]\nmax_connections = 2\n", &[]).await;
    let mut slow = [
        Client::connect(app.addr).await,
        Client::connect(app.addr).await,
    ];
    for client in &mut slow {
        client.send(HALF_A_HEAD).await;
    }
    wait_for_open_connections(&app, 2).await;

    // A third waits in the backlog. The one that finishes its head is
    // answered; the one that does not is closed within the grace, not
    // left to the idle limit (75 s), and the third is served.
    let mut third = Client::connect(app.addr).await;
    third.send(HEALTHZ).await;
    let [stalled, finishing] = &mut slow;
    finishing.send("\r\n").await;
    assert_eq!(finishing.response().await.status, 200);
    stalled.assert_closed().await;
    let reply = third.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
}

#[tokio::test]
async fn at_the_cap_bodies_sent_slowly_are_cut_off_after_a_grace() {
    let app = spawn_app_with(
        "[server]\nmax_connections = 2\nclient_idle_secs = 60\n",
        &[],
    )
    .await;
    let body = large_body(40_000);
    let request = chat_request(&body);
    let (head_and_some, rest) = request.split_at(request.len() - body.len() + 1000);
    let mut slow = [
        Client::connect(app.addr).await,
        Client::connect(app.addr).await,
    ];
    for client in &mut slow {
        client.send(head_and_some).await;
    }
    wait_for_open_connections(&app, 2).await;

    // A third waits in the backlog. A body that keeps the pace on average
    // is served, though it comes in bursts further apart than a second
    // (as curl's --limit-rate sends); one that stalls is answered 408
    // within the grace, not left to the idle limit (60 s), and the third
    // is served.
    let mut third = Client::connect(app.addr).await;
    third.send(HEALTHZ).await;
    let [stalled, finishing] = &mut slow;
    let (burst, rest) = rest.split_at(20 * 1024);
    let finished = async {
        finishing.send(burst).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        finishing.send(rest).await;
        finishing.response().await
    };
    let (reply, stalled_reply) = tokio::join!(finished, stalled.response());
    assert_eq!(reply.status, 200, "{}: {}", reply.head, reply.text());
    let reply = stalled_reply;
    assert_eq!(reply.status, 408, "{}: {}", reply.head, reply.text());
    assert_eq!(reply.header("connection"), Some("close"), "{}", reply.head);
    let error = reply.json();
    assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    assert_eq!(error["error"]["code"], "request_timeout", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("slower than 8 KiB a second")
            && message.contains("server.max_connections"),
        "{message}"
    );
    let reply = third.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(
        app.mock.requests().len(),
        1,
        "only the finished body went on"
    );
}

#[tokio::test]
async fn at_the_cap_a_connection_that_sends_nothing_is_closed_within_the_grace() {
    let app = spawn_app_with("[server]\nmax_connections = 1\n", &[]).await;
    let mut silent = Client::connect(app.addr).await;
    wait_for_open_connections(&app, 1).await;

    // Just accepted, it gets a moment to send its first request; one that
    // never does cannot hold the cap past it.
    let mut next = Client::connect(app.addr).await;
    next.send(HEALTHZ).await;
    let reply = next.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    silent.assert_closed().await;
}

/// A chunked body's head and a chunk of one byte behind an extension of
/// ~4 KB: bytes on the wire, but one byte of body.
fn padded_chunk() -> String {
    format!("1;pad={}\r\nx\r\n", "p".repeat(4000))
}

#[tokio::test]
async fn at_the_cap_only_body_bytes_count_not_chunk_framing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(
        "[server]\nmax_connections = 1\nclient_idle_secs = 60\n",
        &[],
    )
    .await;
    let padded = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let (mut reader, mut writer) = padded.into_split();
    writer
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    wait_for_open_connections(&app, 1).await;

    // The cap is reached; the client goes on sending ~8 KB of extensions
    // every 0.4 s, far more than 8 KiB a second on the wire but a few
    // bytes of body. It is answered 408 while it is still sending.
    let mut next = Client::connect(app.addr).await;
    next.send(HEALTHZ).await;
    let dripping = tokio::spawn(async move {
        for _ in 0..25 {
            let pair = format!("{}{}", padded_chunk(), padded_chunk());
            if writer.write_all(pair.as_bytes()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    });
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("request_timeout") {
        let mut buffer = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(30), reader.read(&mut buffer))
            .await
            .expect("an answer")
            .unwrap();
        assert!(
            n > 0,
            "closed without an answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buffer[..n]);
    }
    assert!(
        !dripping.is_finished(),
        "answered only once the drip stopped"
    );
    assert!(
        answer.starts_with(b"HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let reply = next.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    // The gateway closed it: the drip ends.
    dripping.await.unwrap();
}

#[tokio::test]
async fn at_the_cap_a_connection_closing_after_an_unread_body_keeps_its_place_briefly() {
    let app = spawn_app_with(
        "[server]\nmax_connections = 1\nmax_body_bytes = 1000\n",
        &[],
    )
    .await;
    // Refused before its body is read; the client keeps its end open, so
    // the gateway lingers, reading what it still sends.
    let mut refused = Client::connect(app.addr).await;
    refused
        .send("POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{")
        .await;
    let (status, head) = refused.head().await;
    assert_eq!(status, 413, "{head}");

    // A client waiting at the cap gets the place after a short linger
    // (0.25 s), not the whole 2 s one.
    let waited = tokio::time::Instant::now();
    let mut next = Client::connect(app.addr).await;
    next.send(HEALTHZ).await;
    let reply = next.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    let waited = waited.elapsed();
    assert!(waited < Duration::from_millis(1900), "{waited:?}");
}
