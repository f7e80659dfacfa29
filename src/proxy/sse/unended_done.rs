//! A `[DONE]` event the provider never ends: `data: [DONE]` and its line
//! end, but no blank line after it before the body ends (or while it stays
//! open). An SDK reading the provider directly stops there with the whole
//! answer; the relay ends the event itself, in the provider's line-end
//! style, so the client gets that answer too rather than an error.

use super::SseRelay;
use crate::proxy::sse_events::find_done;
use bytes::Bytes;

/// The longest held event looked at for `[DONE]`.
const MAX_DONE_EVENT: usize = 1024;

/// Where the provider's body stands when a held `[DONE]` is looked at.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum BodyNow {
    /// Nothing more to read for now (the relay waits a moment more before
    /// it believes that).
    Quiet,
    /// The body ended.
    Ended,
}

impl SseRelay {
    /// The bytes that end the event held unfinished when it is `[DONE]`'s.
    /// While the body goes on, only once its lines have ended (a CR as
    /// one: an LF after it would have made it CRLF; one coming later is
    /// after `[DONE]`, and never relayed), and a line without its end not
    /// at all (it may still grow). At the body's end, whatever it lacks.
    pub(super) fn done_event_end(&self, body: BodyNow) -> Option<Bytes> {
        // `[DONE]`'s event is a few bytes (a field line or two before its
        // data line): a long event held while it grows is not looked at.
        if !(1..=MAX_DONE_EVENT).contains(&self.aligner.pending_len()) {
            return None;
        }
        let held = self.aligner.pending();
        find_done(held)?;
        let end: &'static [u8] = match held {
            [.., b'\r', b'\n'] => b"\r\n",
            [.., b'\n'] => b"\n",
            [.., b'\r'] => b"\r",
            _ if body == BodyNow::Ended => b"\n\n",
            _ => return None,
        };
        Some(Bytes::from_static(end))
    }
}
