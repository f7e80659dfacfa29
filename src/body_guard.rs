//! Keeps a value alive until a response body ends (its last frame is sent or
//! the client goes away). Response extensions are dropped once the head is
//! written, so anything that must outlive a stream (a concurrency slot, a
//! token reservation) rides on the body instead.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Wraps `response`'s body so that `guard` is dropped with it.
pub fn hold_until_body_ends<G: Send + Sync + Unpin + 'static>(
    response: Response,
    guard: G,
) -> Response {
    response.map(|inner| {
        Body::new(Guarded {
            inner,
            _guard: guard,
        })
    })
}

struct Guarded<G> {
    inner: Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_guard_lives_until_the_body_is_consumed_and_dropped() {
        let dropped = Arc::new(AtomicBool::new(false));
        let response =
            hold_until_body_ends(Response::new(Body::from("hello")), Flag(dropped.clone()));
        assert!(!dropped.load(Ordering::SeqCst));
        let (_parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
        assert!(dropped.load(Ordering::SeqCst));
    }
}
