//! A wake that waits for the runtime to look at its sockets first: for a
//! deadline seen due, to be believed only once the reads it bounds have
//! been asked again with what the kernel holds.
//!
//! A process frozen past a deadline (SIGSTOP, a paused VM or container)
//! finds its timers due at resume before the readiness of sockets that got
//! data meanwhile has been read from the kernel: tokio's worker meets the
//! timers first, and a read asked then answers `Pending` from the
//! readiness it last saw. A stream whose provider kept sending through the
//! freeze was cut for silence.

use std::future::Future;
use std::task::Context;

/// Arranges for the task to be woken after the runtime has polled its I/O
/// driver (tokio's `yield_now`, which defers the wake until then). The
/// caller returns `Pending`.
pub fn wake_after_io(cx: &mut Context<'_>) {
    let yielded = std::pin::pin!(tokio::task::yield_now());
    // The first poll hands the waker over and is always `Pending`.
    let _ = yielded.poll(cx);
}
