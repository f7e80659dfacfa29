//! A client request's body as the handlers read it. A body that arrived
//! with its head (nearly every chat request) is handed over whole, a slice
//! of the connection's read buffer. A longer or trickled one is read by the
//! connection while the handler waits for it: the handler asks for a frame,
//! the connection reads and decodes one and puts it in a handoff they share.
//! Both run in the connection's task, so the handoff's lock is never contended
//! and nobody needs waking.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

pub struct RequestBody {
    kind: Kind,
}

enum Kind {
    /// The whole body (or nothing left of it).
    Whole(Option<Bytes>),
    /// Frames put in the handoff by the connection as the handler asks.
    Read {
        handoff: Arc<FrameHandoff>,
        length: Option<u64>,
    },
}

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// The client stopped sending its body (see `server.client_idle_secs`).
    #[error("the request body did not arrive within the client idle limit")]
    TimedOut,
    /// The body has announced (a chunk's size) or sent more than
    /// `server.max_body_bytes`.
    #[error("the request body is larger than the limit")]
    TooLarge,
    /// The body would take request bodies past `server.max_body_bytes_total`
    /// (see `body_budget`): none of it is read.
    #[error(
        "the gateway is holding as many request body bytes as it may (server.max_body_bytes_total); retry shortly"
    )]
    NoRoom,
    /// The body would take the bodies its client key's requests hold past
    /// `server.max_body_bytes_per_key` (see `body_budget`).
    #[error(
        "this key's requests are holding as many request body bytes as one key may \
         (server.max_body_bytes_per_key); retry once its other uploads end"
    )]
    KeyShareFull,
    /// At the connection cap or while the server closes, the body came
    /// slower than 8 KiB a second: it is cut off, so slow bodies cannot
    /// hold the cap.
    #[error(
        "the request body arrived slower than 8 KiB a second while the gateway was at \
         server.max_connections or shutting down"
    )]
    TooSlow,
    /// Its chunked framing does not decode.
    #[error("{0}")]
    Invalid(&'static str),
}

impl From<crate::body_budget::NoRoom> for BodyError {
    fn from(no_room: crate::body_budget::NoRoom) -> Self {
        match no_room {
            crate::body_budget::NoRoom::Total => BodyError::NoRoom,
            crate::body_budget::NoRoom::KeyShare => BodyError::KeyShareFull,
        }
    }
}

impl BodyError {
    /// Either way the client was too slow to send its body.
    pub fn is_timeout(&self) -> bool {
        matches!(self, BodyError::TimedOut | BodyError::TooSlow)
    }
}

/// What the connection and a body being read share.
#[derive(Default)]
pub struct FrameHandoff {
    state: Mutex<HandoffState>,
}

#[derive(Default)]
struct HandoffState {
    frame: Option<Bytes>,
    end: Option<Result<(), BodyError>>,
    /// The handler asked for a frame and the handoff had none.
    wanted: bool,
    /// Who asked, when it is not the connection's task itself.
    waker: Option<Waker>,
}

impl RequestBody {
    pub fn empty() -> RequestBody {
        RequestBody {
            kind: Kind::Whole(None),
        }
    }

    pub fn whole(bytes: Bytes) -> RequestBody {
        RequestBody {
            kind: Kind::Whole((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// A body the connection reads into `handoff` as it is asked for;
    /// `length` when the client declared it.
    pub fn read_into(handoff: Arc<FrameHandoff>, length: Option<u64>) -> RequestBody {
        RequestBody {
            kind: Kind::Read { handoff, length },
        }
    }
}

impl FrameHandoff {
    /// A handoff whose body has already ended with `err`: none of it will be
    /// read.
    pub fn ended(err: BodyError) -> FrameHandoff {
        FrameHandoff {
            state: Mutex::new(HandoffState {
                end: Some(Err(err)),
                ..HandoffState::default()
            }),
        }
    }

    /// The handler is waiting for a frame the connection has not read yet.
    pub fn is_wanted(&self) -> bool {
        let state = self.state.lock().expect("handoff lock");
        state.wanted && state.frame.is_none() && state.end.is_none()
    }

    /// Hands over the next frame; `cx` is the connection's, whose own
    /// task needs no wake (it polls the handler again itself).
    pub fn put(&self, frame: Bytes, cx: &Context<'_>) {
        let mut state = self.state.lock().expect("handoff lock");
        state.frame = Some(frame);
        Self::hand_over(state, cx);
    }

    /// The body ended, or could not be read.
    pub fn end(&self, result: Result<(), BodyError>, cx: &Context<'_>) {
        let mut state = self.state.lock().expect("handoff lock");
        state.end = Some(result);
        Self::hand_over(state, cx);
    }

    fn hand_over(mut state: std::sync::MutexGuard<'_, HandoffState>, cx: &Context<'_>) {
        state.wanted = false;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker.filter(|w| !w.will_wake(cx.waker())) {
            waker.wake();
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.get_mut().kind {
            Kind::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Read { handoff, .. } => {
                let mut state = handoff.state.lock().expect("handoff lock");
                if let Some(frame) = state.frame.take() {
                    return Poll::Ready(Some(Ok(Frame::data(frame))));
                }
                match state.end.take() {
                    Some(Ok(())) => {
                        state.end = Some(Ok(()));
                        Poll::Ready(None)
                    }
                    Some(Err(err)) => {
                        state.end = Some(Err(err));
                        Poll::Ready(Some(Err(err)))
                    }
                    None => {
                        state.wanted = true;
                        if !state
                            .waker
                            .as_ref()
                            .is_some_and(|w| w.will_wake(cx.waker()))
                        {
                            state.waker = Some(cx.waker().clone());
                        }
                        Poll::Pending
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Whole(bytes) => bytes.is_none(),
            Kind::Read { handoff, .. } => {
                let state = handoff.state.lock().expect("handoff lock");
                state.frame.is_none() && matches!(state.end, Some(Ok(())))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Kind::Read {
                length: Some(n), ..
            } => SizeHint::with_exact(*n),
            Kind::Read { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_whole_body_is_one_frame_then_the_end() {
        let mut body = RequestBody::whole(Bytes::from_static(b"abc"));
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(3));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
        assert!(RequestBody::whole(Bytes::new()).is_end_stream());
    }

    #[test]
    fn a_read_body_asks_and_the_connection_answers() {
        let handoff = Arc::new(FrameHandoff::default());
        let mut body = RequestBody::read_into(handoff.clone(), Some(5));
        let cx = &mut Context::from_waker(Waker::noop());
        assert!(!handoff.is_wanted(), "nothing asked yet");
        assert!(Pin::new(&mut body).poll_frame(cx).is_pending());
        assert!(handoff.is_wanted());
        handoff.put(Bytes::from_static(b"ab"), cx);
        assert!(!handoff.is_wanted());
        let Poll::Ready(Some(Ok(frame))) = Pin::new(&mut body).poll_frame(cx) else {
            panic!("a frame");
        };
        assert_eq!(frame.into_data().unwrap(), "ab");
        assert!(Pin::new(&mut body).poll_frame(cx).is_pending());
        handoff.end(Err(BodyError::Invalid("cut short")), cx);
        let Poll::Ready(Some(Err(err))) = Pin::new(&mut body).poll_frame(cx) else {
            panic!("the error");
        };
        assert_eq!(err, BodyError::Invalid("cut short"));
        assert!(!body.is_end_stream(), "an error is not a clean end");
    }

    #[test]
    fn a_reader_on_another_task_is_woken() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(false.into()));
        let reader_waker = Waker::from(flag.clone());
        let handoff = Arc::new(FrameHandoff::default());
        let mut body = RequestBody::read_into(handoff.clone(), None);
        assert!(
            Pin::new(&mut body)
                .poll_frame(&mut Context::from_waker(&reader_waker))
                .is_pending()
        );
        handoff.end(Ok(()), &Context::from_waker(Waker::noop()));
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst));
        assert!(body.is_end_stream());
    }
}
