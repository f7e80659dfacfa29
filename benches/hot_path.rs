//! Micro-benchmarks of the per-request and per-chunk work on the gateway's hot
//! path: model route lookup, the request body peek and model splice (1 KiB
//! and 1 MiB bodies), the stream relay's event alignment and usage
//! sniffing, and a clock reading (precise against coarse: a request takes
//! about ten precise ones). Inputs are built outside the timed closures.
//!
//! Run: `cargo bench --bench hot_path` (add `-- --quick` for a fast look).

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kimi_gateway::config;
use kimi_gateway::proxy::body_pieces::BodyCollector;
use kimi_gateway::proxy::request::ChatRequest;
use kimi_gateway::proxy::sse::EventAligner;
use kimi_gateway::proxy::usage::{mentions_usage, parse_usage};
use std::hint::black_box;

fn every_key(var: &str) -> Option<String> {
    var.ends_with("_API_KEY").then(|| "bench-key".to_string())
}

fn route_lookup(c: &mut Criterion) {
    let config = config::resolve("", &every_key).expect("presets resolve");
    let mut group = c.benchmark_group("route_lookup");
    for name in [
        "kimi-k2-turbo-preview",
        "aimlapi/moonshot/kimi-k2-preview",
        "gpt-4o",
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(config.routes.lookup(black_box(name))).is_some())
        });
    }
    group.finish();
}

/// A chat body of about `size` bytes: a conversation whose history fills it,
/// messages of ~200 bytes each (many strings to skip), model near the end.
fn history_body(size: usize) -> Bytes {
    let mut messages = Vec::new();
    let mut len = 0;
    let mut i = 0;
    while len + 300 < size {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        let content = format!(
            "Message {i}: please summarise the \"quarterly\" report and list three risks, one per line.\n{}",
            "lorem ipsum dolor sit amet ".repeat(4)
        );
        let message = serde_json::json!({"role": role, "content": content});
        len += message.to_string().len() + 1;
        messages.push(message);
        i += 1;
    }
    let body = serde_json::json!({
        "messages": messages,
        "temperature": 0.6,
        "stream": true,
        "stream_options": {"include_usage": true},
        "max_tokens": 512,
        "model": "kimi-k2.6",
    });
    serde_json::to_vec(&body).expect("json").into()
}

/// A body of about `size` bytes that is one large string (an inline image).
fn image_body(size: usize) -> Bytes {
    let data = "QUJD".repeat(size / 4);
    let body = serde_json::json!({
        "model": "kimi-k2.6",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{data}")}}
        ]}],
    });
    serde_json::to_vec(&body).expect("json").into()
}

fn request_peek_and_splice(c: &mut Criterion) {
    let spliced_json = Bytes::from_static(b"\"moonshot/kimi-k2-6\"");
    let mut group = c.benchmark_group("request");
    for (label, body) in [
        ("1KiB", history_body(1024)),
        ("1MiB", history_body(1024 * 1024)),
        ("1MiB_image", image_body(1024 * 1024)),
    ] {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("peek/{label}"), |b| {
            b.iter_batched(
                || body.clone(),
                |body| black_box(ChatRequest::peek(body).expect("valid body")),
                BatchSize::SmallInput,
            )
        });
        group.bench_function(format!("peek_splice/{label}"), |b| {
            b.iter_batched(
                || body.clone(),
                |body| {
                    let chat = ChatRequest::peek(body).expect("valid body");
                    black_box(chat.upstream_body("moonshot/kimi-k2-6", &spliced_json))
                },
                BatchSize::SmallInput,
            )
        });
    }
    // A large body as the server hands it over: in frames, never joined.
    let framed = history_body(1024 * 1024);
    group.throughput(Throughput::Bytes(framed.len() as u64));
    group.bench_function("peek_splice/1MiB_in_64KiB_frames", |b| {
        b.iter_batched(
            || {
                let mut body = BodyCollector::default();
                for frame in framed.chunks(64 * 1024) {
                    body.push(framed.slice_ref(frame));
                }
                body.finish()
            },
            |body| {
                let chat = ChatRequest::peek(body).expect("valid body");
                black_box(chat.upstream_body("moonshot/kimi-k2-6", &spliced_json))
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    // The splice alone shares the buffer: its cost does not depend on the size.
    let mut group = c.benchmark_group("request_splice_only");
    for (label, body) in [
        ("1KiB", history_body(1024)),
        ("1MiB", history_body(1024 * 1024)),
    ] {
        let chat = ChatRequest::peek(body).expect("valid body");
        group.bench_function(label, |b| {
            b.iter(|| black_box(chat.upstream_body("moonshot/kimi-k2-6", &spliced_json)))
        });
    }
    group.finish();
}

const DELTA: &str = r#"data: {"id":"chatcmpl-5f1c","object":"chat.completion.chunk","created":1767765293,"model":"kimi-k2-turbo-preview","choices":[{"index":0,"delta":{"content":"Hello "},"finish_reason":null}]}"#;
const LAST: &str = r#"data: {"id":"chatcmpl-5f1c","object":"chat.completion.chunk","created":1767765293,"model":"kimi-k2-turbo-preview","choices":[{"index":0,"delta":{},"finish_reason":"stop","usage":{"prompt_tokens":19,"completion_tokens":200,"total_tokens":219,"cached_tokens":2}}]}"#;

fn shared(bytes: Vec<u8>) -> Bytes {
    let b = Bytes::from(bytes);
    // Make it a shared buffer (like a hyper frame) so clones are refcounts.
    let _ = b.clone();
    b
}

fn sse_chunks(c: &mut Criterion) {
    let one = shared(format!("{DELTA}\n\n").into_bytes());
    let ten = shared(format!("{DELTA}\n\n").repeat(10).into_bytes());
    let last = shared(format!("{LAST}\n\ndata: [DONE]\n\n").into_bytes());
    let (head, rest) = one.split_at(one.len() / 2);
    let (half_a, half_b) = (shared(head.to_vec()), shared(rest.to_vec()));

    let mut group = c.benchmark_group("sse");
    for (label, chunk) in [
        ("push/1_event", &one),
        ("push/10_events", &ten),
        ("push/usage_event", &last),
    ] {
        group.throughput(Throughput::Bytes(chunk.len() as u64));
        let mut aligner = EventAligner::default();
        group.bench_function(label, |b| {
            b.iter_batched(
                || chunk.clone(),
                |chunk| black_box(aligner.push(chunk)),
                BatchSize::SmallInput,
            )
        });
    }
    group.throughput(Throughput::Bytes(one.len() as u64));
    let mut aligner = EventAligner::default();
    group.bench_function("push/event_split_in_two", |b| {
        b.iter_batched(
            || (half_a.clone(), half_b.clone()),
            |(a, b)| {
                black_box(aligner.push(a));
                black_box(aligner.push(b))
            },
            BatchSize::SmallInput,
        )
    });

    group.throughput(Throughput::Bytes(one.len() as u64));
    group.bench_function("mentions_usage/delta", |b| {
        b.iter(|| mentions_usage(black_box(&one)))
    });
    group.throughput(Throughput::Bytes(ten.len() as u64));
    group.bench_function("mentions_usage/10_deltas", |b| {
        b.iter(|| mentions_usage(black_box(&ten)))
    });
    let data = LAST.strip_prefix("data: ").expect("data line").as_bytes();
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("parse_usage/last_event", |b| {
        b.iter(|| parse_usage(black_box(data)).expect("usage"))
    });
    group.finish();
}

/// What a clock reading costs: the precise clocks a request's timings use
/// against the coarse ones its idle stamps, breaker and `date` use.
fn clock_readings(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock");
    group.bench_function("precise/Instant::now", |b| {
        b.iter(|| black_box(std::time::Instant::now()))
    });
    group.bench_function("precise/SystemTime::now", |b| {
        b.iter(|| black_box(std::time::SystemTime::now()))
    });
    group.bench_function("coarse/monotonic", |b| {
        b.iter(|| black_box(kimi_gateway::coarse_clock::monotonic()))
    });
    group.bench_function("coarse/unix_seconds", |b| {
        b.iter(|| black_box(kimi_gateway::coarse_clock::unix_seconds()))
    });
    group.finish();
}

criterion_group!(
    benches,
    route_lookup,
    request_peek_and_splice,
    sse_chunks,
    clock_readings
);
criterion_main!(benches);
