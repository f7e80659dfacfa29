//! The request body arrives upstream byte for byte (only `model` spliced), and
//! headers are replaced, forwarded or dropped as documented.

use crate::helpers::*;
use kimi_gateway::mock::Flavour;
use std::time::Duration;

/// Odd spacing, key order and every feature the gateway does not interpret.
const EXOTIC_BODY: &str = r#"{ "messages" : [
  {"role":"system","content":"You are Kimi."},
  {"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBORw0KGgo="}}]},
  {"role":"assistant","name":"Dr. Kelsier","content":"{","partial":true}
 ],
 "tools":[{"type":"builtin_function","function":{"name":"$web_search"}}],
 "thinking":{"type":"enabled"},   "prompt_cache_key":"abc\u00e9",
 "temperature":0.6e0, "future_field":[1,2,{"nested":null}],
 "model":"kimi-k2-turbo-preview" }"#;

#[tokio::test]
async fn unknown_fields_reach_the_provider_byte_for_byte() {
    let app = spawn_app().await;
    let response = app.chat_raw(EXOTIC_BODY).await;
    assert_eq!(response.status(), 200);
    let seen = app.mock.requests_for(Flavour::Moonshot);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, EXOTIC_BODY.as_bytes());
}

#[tokio::test]
async fn only_the_model_value_is_rewritten_when_the_upstream_id_differs() {
    let app = spawn_app().await;
    let body = EXOTIC_BODY.replace("\"kimi-k2-turbo-preview\"", "\"agentsflare/kimi-k2.6\"");
    let response = app.chat_raw(body.clone()).await;
    assert_eq!(response.status(), 200);
    let seen = app.mock.requests_for(Flavour::Agentsflare);
    let expected = body.replace("\"agentsflare/kimi-k2.6\"", "\"kimi-k2.6\"");
    assert_eq!(seen[0].body, expected.as_bytes());
    assert_eq!(
        seen[0].headers["content-length"].to_str().unwrap(),
        expected.len().to_string()
    );
}

#[tokio::test]
async fn the_provider_sees_its_own_key_and_never_the_clients_headers() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("authorization", "Bearer client-secret")
        .header("cookie", "client=1")
        .header("x-request-id", "client-req-42")
        .body(chat_body("kimi-chat", "hi", false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "client-req-42");
    let seen = &app.mock.requests_for(Flavour::Agentsflare)[0];
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {PROVIDER_KEY}").as_str()
    );
    assert_eq!(seen.headers["x-request-id"], "client-req-42");
    assert!(seen.headers.get("cookie").is_none());
    let all_headers = format!("{:?}", seen.headers);
    assert!(!all_headers.contains("client-secret"));
}

#[tokio::test]
async fn every_upstream_request_carries_its_own_length_accept_and_id() {
    let app = spawn_app().await;
    for (i, stream) in [false, true, false].into_iter().enumerate() {
        let prompt = "x".repeat(10 * i + 1);
        let body = chat_body("kimi-k2-turbo-preview", &prompt, stream).to_string();
        let response = app.chat_raw(body.clone()).await;
        assert_eq!(response.status(), 200);
        let id = response.headers()["x-request-id"].clone();
        let _ = response.bytes().await;
        let seen = &app.mock.requests_for(Flavour::Moonshot)[i];
        let one = |name: &str| {
            let values: Vec<_> = seen.headers.get_all(name).iter().collect();
            assert_eq!(values.len(), 1, "{name}: {values:?}");
            values[0].to_str().unwrap().to_string()
        };
        assert_eq!(one("content-length"), body.len().to_string());
        let accept = if stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        assert_eq!(one("accept"), accept);
        assert_eq!(one("x-request-id"), id.to_str().unwrap());
        assert_eq!(one("content-type"), "application/json");
        assert_eq!(one("accept-encoding"), "identity");
        assert!(one("user-agent").starts_with("kimi-gateway/"));
    }
}

#[tokio::test]
async fn a_request_id_is_generated_when_the_client_sends_none() {
    let app = spawn_app().await;
    let response = app.chat(chat_body("kimi-k2.6", "hi", false)).await;
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(id.len() >= 16, "{id}");
    let seen = &app.mock.requests()[0];
    assert_eq!(seen.headers["x-request-id"], id.as_str());
    // The provider's own id is returned separately.
    assert!(response.headers().contains_key("x-upstream-request-id"));
}

#[tokio::test]
async fn provider_account_headers_and_cookies_are_not_forwarded() {
    let app = spawn_app().await;
    for stream in [false, true] {
        let response = app.chat(chat_body("kimi-k2.6", "hi", stream)).await;
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        for name in ["msh-uid", "msh-gid", "set-cookie"] {
            assert!(
                headers.get(name).is_none(),
                "{name} leaked (stream={stream})"
            );
        }
        // What is not the account's is forwarded: Moonshot's request id,
        // under its own name and as the upstream id.
        let upstream_id = &headers["x-upstream-request-id"];
        assert_eq!(&headers["msh-request-id"], upstream_id);
        // The gateway's own fields and the provider's are each sent once.
        for name in [
            "content-type",
            "x-request-id",
            "x-upstream-request-id",
            "x-gateway-provider",
            "x-gateway-attempts",
            "msh-request-id",
            "date",
        ] {
            assert_eq!(headers.get_all(name).iter().count(), 1, "{name}");
        }
    }
}

#[tokio::test]
async fn a_gateway_in_front_of_another_sends_its_own_fields_not_both() {
    let inner = spawn_app().await;
    let outer = spawn_app_with("", &[("MOONSHOT_BASE_URL", Some(&inner.url("/v1")))]).await;
    for stream in [false, true] {
        let response = outer
            .chat(chat_body("moonshot/kimi-k2.6", "hi", stream))
            .await;
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        // The inner gateway's answer names its provider and attempts too:
        // those are its own, not the outer one's, and never merged in.
        for name in [
            "x-gateway-provider",
            "x-gateway-attempts",
            "x-upstream-request-id",
        ] {
            assert_eq!(
                headers.get_all(name).iter().count(),
                1,
                "{name} (stream={stream})"
            );
        }
        assert_eq!(headers["x-gateway-provider"], "moonshot");
        assert_eq!(headers["x-gateway-attempts"], "1");
    }
    assert_eq!(
        inner.mock.requests().len(),
        2,
        "both went through the inner one"
    );
}

#[tokio::test]
async fn aimlapi_201_becomes_a_plain_200() {
    let app = spawn_app().await;
    let response = app
        .chat(chat_body("moonshot/kimi-k2-preview", "hi", false))
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
}

#[tokio::test]
async fn non_stream_bodies_pass_through_unchanged() {
    let app = spawn_app().await;
    let response = app.chat(chat_body("kimi-chat", "hi", false)).await;
    let body: serde_json::Value = response.json().await.unwrap();
    // Agentsflare's Azure-style extras survive.
    assert_eq!(body["system_fingerprint"], "fp_mock");
    assert!(body["choices"][0]["content_filter_results"].is_object());
}

#[tokio::test]
async fn a_multi_megabyte_vision_body_passes_through() {
    let app = spawn_app().await;
    let image = "A".repeat(3 * 1024 * 1024);
    let body = serde_json::json!({
        "model": "moonshot-v1-8k-vision-preview",
        "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{image}")}},
            {"type": "text", "text": "describe"}
        ]}]
    })
    .to_string();
    let response = app.chat_raw(body.clone()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        app.mock.requests_for(Flavour::Moonshot)[0].body,
        body.as_bytes()
    );
}

/// A body that arrives in many frames (chunked, some of a few bytes, the
/// model id cut across them and followed by a large field) reaches the
/// provider byte for byte with only the model id replaced.
#[tokio::test]
async fn a_body_sent_in_many_pieces_is_spliced_and_forwarded_whole() {
    let app = spawn_app().await;
    let history: Vec<serde_json::Value> = (0..3000)
        .map(|i| serde_json::json!({"role": "user", "content": format!("message {i} {}", "x".repeat(i % 700))}))
        .collect();
    let body = serde_json::json!({
        "messages": history,
        "model": "agentsflare/kimi-k2.6",
        "metadata": {"note": "z".repeat(200_000)}
    })
    .to_string();
    assert!(body.len() > 1024 * 1024, "{}", body.len());
    let model_at = body.find("agentsflare/").unwrap();
    let mut cuts = vec![0, 1, 2, 5000, 70_000, 600_000];
    cuts.extend([model_at - 1, model_at + 3, model_at + 4, model_at + 10]);
    cuts.extend((model_at + 50_010..body.len()).step_by(50_000));
    cuts.push(body.len());
    let frames: Vec<Result<Vec<u8>, std::io::Error>> = cuts
        .windows(2)
        .map(|w| Ok(body.as_bytes()[w[0]..w[1]].to_vec()))
        .collect();
    let stream = futures_util::stream::iter(frames);
    let response = app.chat_raw(reqwest::Body::wrap_stream(stream)).await;
    assert_eq!(response.status(), 200);
    let expected = body.replace("\"agentsflare/kimi-k2.6\"", "\"kimi-k2.6\"");
    let seen = app.mock.requests_for(Flavour::Agentsflare);
    assert_eq!(seen.len(), 1);
    assert!(seen[0].body == expected.as_bytes(), "body differs");
    assert_eq!(
        seen[0].headers["content-length"].to_str().unwrap(),
        expected.len().to_string()
    );
}

/// Reads one HTTP/1.1 response with a `Content-Length` from `stream`:
/// its status line, its head and its body.
async fn read_response(stream: &mut tokio::net::TcpStream) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut bytes = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(bytes[..end].to_vec()).unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if bytes.len() >= end + 4 + length {
                let body = String::from_utf8(bytes[end + 4..end + 4 + length].to_vec()).unwrap();
                return (head, body);
            }
        }
        let n = stream.read(&mut buffer).await.unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&buffer[..n]);
    }
}

/// A client that sends a `Content-Length` body in pieces, pausing between
/// them, gets its answer, and the kept-alive connection serves the next
/// request too.
#[tokio::test]
async fn a_body_trickled_in_pieces_is_answered_and_the_connection_kept() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let body = chat_body("kimi-k2-turbo-preview", "one piece at a time", false).to_string();
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let exchange = async {
        for round in 0..2 {
            let head = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            let third = body.len() / 3;
            for piece in [&body[..third], &body[third..2 * third], &body[2 * third..]] {
                // Pacing a slow client, so each piece arrives on its own.
                tokio::time::sleep(Duration::from_millis(30)).await;
                stream.write_all(piece.as_bytes()).await.unwrap();
            }
            let (head, answer) = read_response(&mut stream).await;
            assert!(head.starts_with("HTTP/1.1 200"), "round {round}: {head}");
            assert!(answer.contains("chat.completion"), "{answer}");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("both requests answered");
    let seen = app.mock.requests_for(Flavour::Moonshot);
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r.body == body.as_bytes()));
}

/// `Expect: 100-continue`: the gateway asks for the body when it starts
/// reading it, and answers once it has arrived.
#[tokio::test]
async fn a_client_that_expects_100_continue_is_asked_for_its_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let body = chat_body("kimi-k2-turbo-preview", "may I send it?", false).to_string();
    let mut stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let exchange = async {
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        let mut got = vec![0u8; interim.len()];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, interim);
        stream.write_all(body.as_bytes()).await.unwrap();
        let (head, answer) = read_response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(answer.contains("chat.completion"), "{answer}");
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("asked for the body and answered");
}
