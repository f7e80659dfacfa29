//! A raw HTTP/1.1 client for tests that need the wire itself: pipelining,
//! half-sent bodies, malformed heads, what the gateway writes byte for byte.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any one read waits before the test fails.
pub(crate) const READ_WAIT: Duration = Duration::from_secs(10);

/// A raw client connection with what it has read and not yet consumed
/// (pipelined responses arrive together).
pub(crate) struct Client {
    pub(crate) stream: TcpStream,
    pub(crate) read: Vec<u8>,
}

/// One response as it came off the wire.
pub(crate) struct Reply {
    pub(crate) status: u16,
    /// The status line and header fields, without the blank line.
    pub(crate) head: String,
    /// The body, chunked framing removed.
    pub(crate) body: Vec<u8>,
    /// The body's bytes as sent, framing included.
    pub(crate) raw: Vec<u8>,
}

impl Reply {
    /// The first value of header `name`, if any.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        header_of(&self.head, name)
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("a UTF-8 body")
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text()))
    }

    /// Asserts an OpenAI-shaped error of type `invalid_request_error`.
    pub(crate) fn assert_invalid_request_error(&self) {
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.head
        );
        let body = self.json();
        let error = body["error"].as_object().expect("an error object");
        assert!(error["message"].is_string(), "{body}");
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert!(
            error.contains_key("code") && error.contains_key("param"),
            "{body}"
        );
    }
}

pub(crate) fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            read: Vec::new(),
        }
    }

    pub(crate) async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.unwrap();
    }

    /// Reads more bytes onto `read`; 0 when the gateway closed the
    /// connection.
    pub(crate) async fn fill(&mut self) -> usize {
        let mut buffer = [0u8; 16 * 1024];
        let n = tokio::time::timeout(READ_WAIT, self.stream.read(&mut buffer))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "nothing more within {READ_WAIT:?}; read so far: {:?}",
                    String::from_utf8_lossy(&self.read)
                )
            })
            .unwrap_or_else(|err| {
                panic!(
                    "read failed ({err}); read so far: {:?}",
                    String::from_utf8_lossy(&self.read)
                )
            });
        self.read.extend_from_slice(&buffer[..n]);
        n
    }

    /// Reads until `n` bytes are buffered, and takes them.
    pub(crate) async fn take(&mut self, n: usize) -> Vec<u8> {
        while self.read.len() < n {
            let got = self.fill().await;
            assert!(
                got > 0,
                "connection closed mid-response: {:?}",
                String::from_utf8_lossy(&self.read)
            );
        }
        self.read.drain(..n).collect()
    }

    /// Takes one CRLF-terminated line (without the CRLF).
    pub(crate) async fn line(&mut self) -> String {
        loop {
            if let Some(end) = self.read.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(end + 2).await;
                return String::from_utf8(line[..end].to_vec()).expect("a UTF-8 line");
            }
            let got = self.fill().await;
            assert!(
                got > 0,
                "connection closed mid-line: {:?}",
                String::from_utf8_lossy(&self.read)
            );
        }
    }

    /// Reads one response head: its status and text.
    pub(crate) async fn head(&mut self) -> (u16, String) {
        loop {
            if let Some(end) = self.read.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = self.take(end + 4).await;
                let head = String::from_utf8(head[..end].to_vec()).expect("a UTF-8 head");
                let status = head
                    .strip_prefix("HTTP/1.1 ")
                    .and_then(|rest| rest.get(..3))
                    .and_then(|code| code.parse().ok())
                    .unwrap_or_else(|| panic!("not an HTTP/1.1 status line: {head}"));
                return (status, head);
            }
            let got = self.fill().await;
            assert!(
                got > 0,
                "connection closed before a whole head: {:?}",
                String::from_utf8_lossy(&self.read)
            );
        }
    }

    /// Reads one response to a request other than `HEAD`: head, then a
    /// body framed by `content-length`, by chunks, or by the close.
    pub(crate) async fn response(&mut self) -> Reply {
        let (status, head) = self.head().await;
        let (body, raw) = if header_of(&head, "transfer-encoding")
            .is_some_and(|coding| coding.eq_ignore_ascii_case("chunked"))
        {
            self.chunked_body().await
        } else if let Some(length) = header_of(&head, "content-length") {
            let length: usize = length.parse().expect("a numeric content-length");
            let body = self.take(length).await;
            (body.clone(), body)
        } else {
            while self.fill().await > 0 {}
            let body = std::mem::take(&mut self.read);
            (body.clone(), body)
        };
        Reply {
            status,
            head,
            body,
            raw,
        }
    }

    /// A chunked body, decoded, and its bytes as sent.
    pub(crate) async fn chunked_body(&mut self) -> (Vec<u8>, Vec<u8>) {
        let mut body = Vec::new();
        let mut raw = Vec::new();
        loop {
            let size_line = self.line().await;
            raw.extend_from_slice(size_line.as_bytes());
            raw.extend_from_slice(b"\r\n");
            let digits = size_line.split(';').next().unwrap().trim();
            let size = usize::from_str_radix(digits, 16)
                .unwrap_or_else(|_| panic!("not a chunk size line: {size_line:?}"));
            if size == 0 {
                // Trailer fields, if any, up to the blank line.
                loop {
                    let trailer = self.line().await;
                    raw.extend_from_slice(trailer.as_bytes());
                    raw.extend_from_slice(b"\r\n");
                    if trailer.is_empty() {
                        return (body, raw);
                    }
                }
            }
            let data = self.take(size + 2).await;
            assert_eq!(&data[size..], b"\r\n", "a chunk not ended by CRLF");
            body.extend_from_slice(&data[..size]);
            raw.extend_from_slice(&data);
        }
    }

    /// Asserts that the gateway closed the connection: nothing more is
    /// read, the next read returns 0 bytes.
    pub(crate) async fn assert_closed(&mut self) {
        assert!(
            self.read.is_empty(),
            "bytes after the response: {:?}",
            String::from_utf8_lossy(&self.read)
        );
        assert_eq!(self.fill().await, 0, "the connection stayed open");
    }
}

/// A request head plus body for the chat endpoint, `Content-Length` framed.
pub(crate) fn chat_request(body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

pub(crate) const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nhost: gateway\r\n\r\n";

/// Asserts a fresh connection still gets `GET /healthz` answered.
pub(crate) async fn assert_still_serving(addr: SocketAddr) {
    let mut client = Client::connect(addr).await;
    client.send(HEALTHZ).await;
    let reply = client.response().await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.json()["status"], "ok");
}
