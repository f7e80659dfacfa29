//! A response written to the client: its head, then its body framed by
//! length or in chunks, gathered into as few writes as the body allows.

use super::waits::{BODY_PROGRESS, IdleLimit, SEND_QUEUE_SETTLES, SendQueue};
use super::{Connection, Next};
use crate::coarse_clock;
use crate::server::response_head::{self, BodyFraming, ConnectionHeader};
use crate::wire_fields::WireFields;
use axum::response::Response;
use http::{StatusCode, Version};
use http_body::Body as _;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Response bytes gathered before they are written even though more are
/// ready. Also what a stream holds, besides its buffers, for a client that
/// stops reading: the write then waits with what was gathered. 64 KiB held
/// ~148 KB per stalled stream, 16 KiB ~60 KB (`benches/stalled_readers.py`);
/// a provider's events seldom come 16 KiB at a time, so writes per stream
/// are the same.
const WRITE_AT: usize = 16 * 1024;

impl Connection {
    /// Writes the response, `fields` after its header map's. `Ok(true)`:
    /// the connection can take another request.
    pub(super) async fn respond(
        &mut self,
        response: Response,
        fields: &WireFields,
        head_only: bool,
        version: Version,
        mut connection: ConnectionHeader,
        mut idle: Option<&mut IdleLimit<'_>>,
    ) -> std::io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        let status = parts.status;
        let framing = if status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            BodyFraming::None
        } else if let Some(length) = head_only.then(|| declared_length(&parts.headers)).flatten() {
            // A HEAD response's length is the one GET would have (the
            // handler's field), not its empty body's.
            BodyFraming::Length(length)
        } else if let Some(length) = http_body::Body::size_hint(&body).exact() {
            BodyFraming::Length(length)
        } else if version == Version::HTTP_11 {
            BodyFraming::Chunked
        } else {
            connection = ConnectionHeader::Close;
            BodyFraming::UntilClose
        };
        let keep_alive = connection != ConnectionHeader::Close;
        self.output.copy_with(|out| {
            let encoded = fields.as_bytes();
            response_head::encode(status, &parts.headers, encoded, framing, connection, out);
        });
        drop(parts);
        if head_only || matches!(framing, BodyFraming::None | BodyFraming::Length(0)) {
            drop(body);
            self.write_output(idle.as_deref_mut()).await?;
            return Ok(keep_alive);
        }
        // Bytes still owed after a `content-length`.
        let mut owed = match framing {
            BodyFraming::Length(n) => Some(n),
            _ => None,
        };
        loop {
            match poll_fn(|cx| self.poll_body(cx, &mut body)).await {
                Next::Data(mut data) => {
                    if data.is_empty() {
                        continue;
                    }
                    if framing == BodyFraming::Chunked {
                        self.output.copy_with(|out| {
                            let mut size = [0u8; 16];
                            out.extend_from_slice(hex(data.len(), &mut size));
                            out.extend_from_slice(b"\r\n");
                        });
                        self.output.push(data);
                        self.output.copy(b"\r\n");
                    } else if let Some(owed) = &mut owed {
                        // More than the length the body announced: what
                        // the client was told wins.
                        data.truncate(usize::try_from(*owed).unwrap_or(usize::MAX));
                        *owed -= data.len() as u64;
                        self.output.push(data);
                        if *owed == 0 {
                            self.write_output(idle.as_deref_mut()).await?;
                            return Ok(keep_alive);
                        }
                    } else {
                        self.output.push(data);
                    }
                    if self.output.len() >= WRITE_AT {
                        self.write_output(idle.as_deref_mut()).await?;
                    }
                }
                Next::Write => self.write_output(idle.as_deref_mut()).await?,
                Next::End => {
                    if framing == BodyFraming::Chunked {
                        self.output.copy(b"0\r\n\r\n");
                    }
                    self.write_output(idle.as_deref_mut()).await?;
                    // A body shorter than its announced length leaves the
                    // client waiting for the rest: only a close ends that.
                    return Ok(keep_alive && owed.is_none_or(|n| n == 0));
                }
                Next::Failed => {
                    // No way to say so in HTTP/1.1 but to end the
                    // connection before the body's end.
                    self.write_output(idle.as_deref_mut()).await?;
                    return Ok(false);
                }
                Next::ClientLeft => return Err(std::io::ErrorKind::ConnectionReset.into()),
            }
        }
    }

    /// Writes what the output holds. A client that takes none of it for the
    /// idle limit (or less than [`BODY_PROGRESS`] bytes of it in that
    /// time) fails the write with `TimedOut`, and the connection is set to
    /// be reset when dropped: closed normally, it would keep the unsent
    /// bytes in the kernel, trying to deliver them to a client that does
    /// not read. What the client took is what the socket accepted, and when
    /// the limit passes with the socket still full, also what the client
    /// acknowledged meanwhile ([`SendQueue`]): a client reading
    /// steadily, slower than the socket's buffer shows, is not cut. The
    /// clock is read and the timer polled only when the socket takes
    /// nothing.
    pub(super) async fn write_output(
        &mut self,
        mut idle: Option<&mut IdleLimit<'_>>,
    ) -> std::io::Result<()> {
        let queue = SendQueue::of(&self.io);
        // When the current wait began (coarse clock), the bytes written by
        // then, those the client had not acknowledged then (or once the
        // wait had settled), and whether it has.
        let mut wait: Option<(Duration, usize, Option<usize>, bool)> = None;
        let mut too_slow = |cx: &mut Context<'_>, written: usize| {
            let Some(limit) = idle.as_deref_mut() else {
                return false;
            };
            let (began, from, unacked, settled) = match &mut wait {
                Some(waiting) if written - waiting.1 < BODY_PROGRESS => waiting,
                _ => wait.insert((
                    coarse_clock::monotonic(),
                    written,
                    queue.unacknowledged(),
                    false,
                )),
            };
            if !*settled {
                // What the client's kernel takes into its receive buffer
                // as the socket fills is no reading: acknowledged in the
                // first moments of the wait, it would count as taken once
                // and double the limit for a client that stopped reading.
                // The count starts once they have passed.
                let settle = (limit.after / 4).min(SEND_QUEUE_SETTLES);
                if !limit.passed_for(cx, *began, settle) {
                    return false;
                }
                *settled = true;
                *unacked = queue.unacknowledged();
            }
            let (began, from, unacked) = (*began, *from, *unacked);
            if !limit.passed(cx, began) {
                return false;
            }
            let now_unacked = queue.unacknowledged();
            let taken = match (unacked, now_unacked) {
                (Some(then), Some(now)) => (written - from) + then.saturating_sub(now),
                _ => 0,
            };
            if taken < BODY_PROGRESS {
                return true;
            }
            let now = coarse_clock::monotonic();
            wait = Some((now, written, now_unacked, true));
            limit.passed(cx, now)
        };
        let written = self.output.write_to(&mut self.io, &mut too_slow);
        let result = written.await;
        if result
            .as_ref()
            .is_err_and(|err| err.kind() == std::io::ErrorKind::TimedOut)
        {
            let _ = self.io.set_zero_linger();
        }
        result
    }

    pub(super) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut axum::body::Body,
    ) -> Poll<Next> {
        loop {
            return match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Next::Data(data)),
                    // Trailers are not sent.
                    Err(_) => continue,
                },
                Poll::Ready(Some(Err(err))) => {
                    tracing::debug!(error = %err, "response body failed");
                    Poll::Ready(Next::Failed)
                }
                Poll::Ready(None) => Poll::Ready(Next::End),
                Poll::Pending if !self.output.is_empty() => Poll::Ready(Next::Write),
                Poll::Pending => self.poll_client_left(cx).map(|()| Next::ClientLeft),
            };
        }
    }
}

/// The handler's own `content-length`, if it set one.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `n` in hexadecimal (a chunk's size line), written into `out`.
fn hex(mut n: usize, out: &mut [u8; 16]) -> &[u8] {
    let mut at = out.len();
    loop {
        at -= 1;
        out[at] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            return &out[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn chunk_sizes_are_hexadecimal() {
        let mut out = [0u8; 16];
        assert_eq!(super::hex(0, &mut out), b"0");
        assert_eq!(super::hex(255, &mut out), b"ff");
        assert_eq!(super::hex(16_384, &mut out), b"4000");
        assert_eq!(super::hex(usize::MAX, &mut out), b"ffffffffffffffff");
    }
}
