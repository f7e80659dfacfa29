//! What a connection has to write, gathered until it is written in one
//! vectored write: the response head and small pieces copied into one
//! buffer, larger body frames kept as the shared bytes they came in.

use bytes::Bytes;
use smallvec::SmallVec;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// Frames shorter than this are copied next to the bytes around them
/// (a chunk's size line, the head) rather than written as a piece of
/// their own.
const COPY_BELOW: usize = 1024;
/// Pieces written per system call at most (Linux allows 1024).
const MAX_SLICES: usize = 64;

#[derive(Default)]
pub struct Output {
    copied: Vec<u8>,
    pieces: SmallVec<[Piece; 8]>,
    /// Bytes gathered and not yet written.
    len: usize,
}

enum Piece {
    /// `copied` up to this offset (from where the piece before ended).
    Copied(usize),
    Shared(Bytes),
}

impl Output {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends whatever `write` puts in the copy buffer.
    pub fn copy_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let before = self.copied.len();
        write(&mut self.copied);
        self.len += self.copied.len() - before;
        let end = self.copied.len();
        match self.pieces.last_mut() {
            Some(Piece::Copied(last)) => *last = end,
            _ => self.pieces.push(Piece::Copied(end)),
        }
    }

    pub fn copy(&mut self, bytes: &[u8]) {
        self.copy_with(|out| out.extend_from_slice(bytes));
    }

    pub fn push(&mut self, bytes: Bytes) {
        if bytes.len() < COPY_BELOW {
            self.copy(&bytes);
        } else {
            self.len += bytes.len();
            self.pieces.push(Piece::Shared(bytes));
        }
    }

    /// Writes everything gathered. Whenever `io` takes nothing,
    /// `too_slow` is asked, with the bytes this call has written so far,
    /// whether the writer has waited long enough (it registers its own
    /// wake-up if not): then the write fails with `TimedOut`. A write
    /// that never waits never asks, so costs no timer.
    pub async fn write_to<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        mut too_slow: impl FnMut(&mut Context<'_>, usize) -> bool,
    ) -> std::io::Result<()> {
        let mut slices: SmallVec<[IoSlice<'_>; 8]> = SmallVec::with_capacity(self.pieces.len());
        let mut from = 0;
        for piece in &self.pieces {
            match piece {
                Piece::Copied(to) => {
                    slices.push(IoSlice::new(&self.copied[from..*to]));
                    from = *to;
                }
                Piece::Shared(bytes) => slices.push(IoSlice::new(bytes)),
            }
        }
        let mut rest = &mut slices[..];
        let mut total = 0;
        while !rest.is_empty() {
            let batch = rest.len().min(MAX_SLICES);
            let written =
                poll_fn(
                    |cx| match Pin::new(&mut *io).poll_write_vectored(cx, &rest[..batch]) {
                        Poll::Pending if too_slow(cx, total) => {
                            Poll::Ready(Err(std::io::ErrorKind::TimedOut.into()))
                        }
                        polled => polled,
                    },
                )
                .await?;
            if written == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            total += written;
            IoSlice::advance_slices(&mut rest, written);
        }
        drop(slices);
        self.copied.clear();
        self.pieces.clear();
        self.len = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn pieces_go_out_in_order_however_the_writes_split() {
        let big = Bytes::from(vec![b'x'; 5000]);
        let mut output = Output::default();
        output.copy(b"head\r\n");
        output.push(Bytes::from_static(b"small "));
        output.push(big.clone());
        output.copy_with(|out| out.extend_from_slice(b"\r\nend"));
        assert_eq!(output.len(), 6 + 6 + 5000 + 5);
        // A pipe far smaller than the output: writes are partial.
        let (mut writer, mut reader) = tokio::io::duplex(100);
        let read = tokio::spawn(async move {
            let mut all = Vec::new();
            reader.read_to_end(&mut all).await.unwrap();
            all
        });
        output.write_to(&mut writer, |_, _| false).await.unwrap();
        assert!(output.is_empty());
        output.copy(b"!");
        output.write_to(&mut writer, |_, _| false).await.unwrap();
        drop(writer);
        let mut expected = b"head\r\nsmall ".to_vec();
        expected.extend_from_slice(&big);
        expected.extend_from_slice(b"\r\nend!");
        assert_eq!(read.await.unwrap(), expected);
    }

    /// A write that waits asks whether it has waited too long, each time,
    /// with the bytes written so far, and a yes ends it with `TimedOut`; a
    /// write that never waits never asks (no clock, no timer).
    #[tokio::test]
    async fn only_a_waiting_write_asks_whether_it_has_waited_too_long() {
        let mut output = Output::default();
        output.push(Bytes::from(vec![b'x'; 5000]));
        let (mut roomy, _reader) = tokio::io::duplex(64 * 1024);
        let mut asked = 0;
        output
            .write_to(&mut roomy, |_, _| {
                asked += 1;
                false
            })
            .await
            .unwrap();
        assert_eq!(asked, 0);

        output.push(Bytes::from(vec![b'x'; 5000]));
        // Nobody reads: 100 bytes go, then the pipe is full for good.
        let (mut full, _reader) = tokio::io::duplex(100);
        let mut written_when_asked = Vec::new();
        let err = output
            .write_to(&mut full, |cx, written| {
                written_when_asked.push(written);
                // The caller's own wake-up (its timer, in the connection).
                cx.waker().wake_by_ref();
                written_when_asked.len() == 3
            })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(written_when_asked, [100, 100, 100]);
    }
}
