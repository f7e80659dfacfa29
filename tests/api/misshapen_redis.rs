//! A store that speaks Redis's protocol but answers a request's admission
//! with a reply of the wrong shape (nil, an empty or a short list), as a
//! proxy or a "Redis-compatible" store in Redis's place may: the gateway
//! takes it for a failing store, as `on_redis_error` says, and serves on.

use crate::auth::spawn_with_keys;
use crate::helpers::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A fake store on a loopback port: the start-up access check's calls
/// (keys named `access-check`) are answered as Redis would, every other
/// admission with `reply`. It counts the calls it answered with `reply`.
struct MisshapenRedis {
    port: u16,
    misshapen: Arc<AtomicUsize>,
}

impl MisshapenRedis {
    async fn start(reply: &'static [u8]) -> MisshapenRedis {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let misshapen = Arc::new(AtomicUsize::new(0));
        let counter = misshapen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, reply, counter.clone()));
            }
        });
        MisshapenRedis { port, misshapen }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

async fn serve(mut stream: TcpStream, reply: &'static [u8], misshapen: Arc<AtomicUsize>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((command, used)) = parse_command(&buffer) {
            buffer.drain(..used);
            let answer = answer(&command, reply, &misshapen);
            if stream.write_all(&answer).await.is_err() {
                return;
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
}

fn answer(command: &[Vec<u8>], reply: &'static [u8], misshapen: &AtomicUsize) -> Vec<u8> {
    let word = |i: usize| command.get(i).map(|w| w.to_ascii_uppercase());
    let answer: &[u8] = match word(0).as_deref() {
        Some(b"PING") => b"+PONG\r\n",
        Some(b"SCRIPT") => {
            // SCRIPT LOAD body: the body's SHA-1, which the client checks.
            let body = std::str::from_utf8(&command[2]).unwrap();
            let hash = redis::Script::new(body).get_hash().to_owned();
            return format!("${}\r\n{hash}\r\n", hash.len()).into_bytes();
        }
        Some(b"EVALSHA") => {
            let has = |text: &[u8]| {
                command
                    .iter()
                    .any(|w| w.windows(text.len()).any(|part| part == text))
            };
            // EVALSHA sha numkeys key... arg...: a settlement's second
            // argument (after the lease) is a check's kind.
            let keys: usize = std::str::from_utf8(&command[2]).unwrap().parse().unwrap();
            let second_argument = command.get(3 + keys + 1).map(Vec::as_slice);
            if has(b"extend-only") || matches!(second_argument, Some(b"c" | b"g")) {
                // A lease refresh or a settlement (the lease, then "c"/"g").
                b":1\r\n"
            } else if has(b"access-check") {
                b"*5\r\n:1\r\n:1\r\n:1000\r\n:1\r\n:60000\r\n"
            } else {
                misshapen.fetch_add(1, Ordering::SeqCst);
                reply
            }
        }
        _ => b"+OK\r\n",
    };
    answer.to_vec()
}

/// One command (an array of bulk strings) from the front of `buffer`, and
/// how many bytes it took; `None` until it is all there.
fn parse_command(buffer: &[u8]) -> Option<(Vec<Vec<u8>>, usize)> {
    fn line(buffer: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = at + buffer.get(at..)?.windows(2).position(|w| w == b"\r\n")?;
        Some((&buffer[at..end], end + 2))
    }
    let (count, mut at) = line(buffer, 0)?;
    let count: usize = std::str::from_utf8(&count[1..]).ok()?.parse().ok()?;
    let mut words = Vec::with_capacity(count);
    for _ in 0..count {
        let (length, after) = line(buffer, at)?;
        let length: usize = std::str::from_utf8(&length[1..]).ok()?.parse().ok()?;
        let word = buffer.get(after..after + length)?;
        words.push(word.to_vec());
        at = after + length + 2;
    }
    (buffer.len() >= at).then_some((words, at))
}

async fn a_misshapen_admission_reply_is_a_failing_store(reply: &'static [u8]) {
    let redis = MisshapenRedis::start(reply).await;
    let app = spawn_with_keys(&format!(
        "[limits]\nbackend = \"redis\"\nredis_url = \"{}\"\non_redis_error = \"closed\"\n\
         [keys.team-a.limits]\nrequests_per_minute = 100\nconcurrent_requests = 2\n",
        redis.url()
    ))
    .await;
    for _ in 0..3 {
        let response = app
            .chat_as("sk-a", chat_body("kimi-k2.6", "hi", false))
            .await;
        assert_eq!(
            response.status(),
            503,
            "reply {:?}",
            String::from_utf8_lossy(reply)
        );
        let error = error_of(response).await;
        assert_eq!(error["code"], "rate_limit_store_unavailable");
    }
    assert!(redis.misshapen.load(Ordering::SeqCst) >= 1);
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_nil_admission_reply_is_a_failing_store() {
    a_misshapen_admission_reply_is_a_failing_store(b"*-1\r\n").await;
}

#[tokio::test]
async fn an_empty_admission_reply_is_a_failing_store() {
    a_misshapen_admission_reply_is_a_failing_store(b"*0\r\n").await;
}

#[tokio::test]
async fn a_short_refusal_is_a_failing_store() {
    a_misshapen_admission_reply_is_a_failing_store(b"*2\r\n:0\r\n:1\r\n").await;
}

#[tokio::test]
async fn a_short_admission_is_a_failing_store() {
    a_misshapen_admission_reply_is_a_failing_store(b"*2\r\n:1\r\n:5\r\n").await;
}
