//! Wakes a connection's task gives itself while it is being polled, held
//! back where the poll that caused them has already done what they ask for.
//!
//! hyper's server hands request body bytes between its connection state
//! machine and the handler reading the body through a channel, and each
//! side wakes the other when it puts or takes a frame. Here both sides run
//! in one task (the connection and the handler it serves), so those wakes
//! are the task waking itself for work it is doing at that moment, and the
//! runtime would poll the whole connection once more for nothing. (The
//! provider side, `client/`, has no channel to wake through.)
//!
//! [`run_connection`] puts a waker of its own between a connection's task
//! and everything polled inside it. [`hold`] runs a poll with the wakes that
//! task gives itself *on this thread, during that call* held back; the caller
//! drops them when it knows they ask for nothing (the frame that completes a
//! body was taken; the next poll drives the connection anyway) and passes
//! them on otherwise. Wakes from other threads, wakes of other tasks, and
//! wakes outside a hold always go straight through.

use futures_util::task::AtomicWaker;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

/// The waker a connection's inner futures are given: it forwards to the
/// task's own waker, unless a [`hold`] on this thread is holding it back.
#[derive(Default)]
struct ConnectionWaker {
    task: AtomicWaker,
}

/// This thread's view: which connection is being polled, and whether a
/// hold is on and has held a wake back.
#[derive(Clone, Copy)]
struct ThreadState {
    polling: *const ConnectionWaker,
    holding: bool,
    held: bool,
}

thread_local! {
    static STATE: Cell<ThreadState> = const {
        Cell::new(ThreadState {
            polling: std::ptr::null(),
            holding: false,
            held: false,
        })
    };
}

impl Wake for ConnectionWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let held = STATE.with(|state| {
            let mut now = state.get();
            if now.holding && std::ptr::eq(now.polling, Arc::as_ptr(self)) {
                now.held = true;
                state.set(now);
                true
            } else {
                false
            }
        });
        if !held {
            self.task.wake();
        }
    }
}

/// Restores the thread's state when a poll ends, also by a panic.
struct Restore(ThreadState);

impl Drop for Restore {
    fn drop(&mut self) {
        STATE.with(|state| state.set(self.0));
    }
}

pin_project_lite::pin_project! {
    /// A connection's future, its inner futures polled with a waker that
    /// [`hold`] can hold back (a struct rather than an `async fn`, which
    /// would keep a second copy of the connection's state).
    pub struct RunConnection<F> {
        #[pin]
        connection: F,
        waker: Arc<ConnectionWaker>,
        inner_waker: Waker,
    }
}

/// Runs `connection` so that [`hold`] works inside it.
pub fn run_connection<F: Future>(connection: F) -> RunConnection<F> {
    let waker = Arc::new(ConnectionWaker::default());
    RunConnection {
        connection,
        inner_waker: Waker::from(waker.clone()),
        waker,
    }
}

impl<F: Future> Future for RunConnection<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.waker.task.register(cx.waker());
        let _restore = Restore(STATE.with(|state| {
            state.replace(ThreadState {
                polling: Arc::as_ptr(this.waker),
                holding: false,
                held: false,
            })
        }));
        this.connection
            .poll(&mut Context::from_waker(this.inner_waker))
    }
}

/// Wakes [`hold`] held back: pass them on with [`Held::release`] unless the
/// caller knows they ask for nothing.
#[must_use = "held wakes are lost unless released"]
pub struct Held(bool);

impl Held {
    /// Wakes the task if a wake was held back.
    pub fn release(self, cx: &Context<'_>) {
        if self.0 {
            cx.waker().wake_by_ref();
        }
    }

    /// Whether a wake was held back.
    pub fn any(&self) -> bool {
        self.0
    }
}

/// Runs `poll`, holding back the wakes the connection being polled on this
/// thread gives itself meanwhile. Outside [`run_connection`] nothing is held.
/// Inside another hold, wakes this one releases go to the outer one.
pub fn hold<R>(poll: impl FnOnce() -> R) -> (R, Held) {
    let before = STATE.with(Cell::get);
    if before.polling.is_null() {
        return (poll(), Held(false));
    }
    let restore = Restore(before);
    STATE.with(|state| {
        state.set(ThreadState {
            holding: true,
            held: false,
            ..before
        })
    });
    let result = poll();
    let held = STATE.with(Cell::get).held;
    drop(restore);
    (result, Held(held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A task waker that counts its wakes.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `future` once with a counting task waker; returns the count.
    fn poll_once<F: Future>(future: F) -> usize {
        let counter = Arc::new(Counting::default());
        let waker = Waker::from(counter.clone());
        let mut future = std::pin::pin!(run_connection(future));
        let _ = future.as_mut().poll(&mut Context::from_waker(&waker));
        counter.0.load(Ordering::SeqCst)
    }

    #[test]
    fn a_held_wake_is_dropped_or_released() {
        // Held and dropped: the task is not woken.
        let woken = poll_once(poll_fn(|cx| {
            let ((), held) = hold(|| cx.waker().wake_by_ref());
            assert!(held.any());
            Poll::<()>::Pending
        }));
        assert_eq!(woken, 0);
        // Held and released: woken once.
        let woken = poll_once(poll_fn(|cx| {
            let ((), held) = hold(|| cx.waker().wake_by_ref());
            held.release(cx);
            Poll::<()>::Pending
        }));
        assert_eq!(woken, 1);
        // Outside a hold: straight through.
        let woken = poll_once(poll_fn(|cx| {
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        assert_eq!(woken, 1);
    }

    #[test]
    fn wakes_from_elsewhere_are_never_held() {
        // A wake saved during a hold and given later, as a socket's
        // readiness is: it reaches the task.
        let saved: Arc<std::sync::Mutex<Option<Waker>>> = Arc::default();
        let counter = Arc::new(Counting::default());
        let task_waker = Waker::from(counter.clone());
        let keep = saved.clone();
        let mut future = std::pin::pin!(run_connection(poll_fn(move |cx| {
            let ((), held) = hold(|| *keep.lock().unwrap() = Some(cx.waker().clone()));
            assert!(!held.any());
            Poll::<()>::Pending
        })));
        let _ = future.as_mut().poll(&mut Context::from_waker(&task_waker));
        let later = saved.lock().unwrap().take().unwrap();
        std::thread::spawn(move || later.wake()).join().unwrap();
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);

        // Another connection's waker, woken inside this one's hold.
        let other_counter = Arc::new(Counting::default());
        let other_task = Waker::from(other_counter.clone());
        let other_inner: Arc<std::sync::Mutex<Option<Waker>>> = Arc::default();
        let keep = other_inner.clone();
        let mut other = std::pin::pin!(run_connection(poll_fn(move |cx| {
            *keep.lock().unwrap() = Some(cx.waker().clone());
            Poll::<()>::Pending
        })));
        let _ = other.as_mut().poll(&mut Context::from_waker(&other_task));
        let other_waker = other_inner.lock().unwrap().take().unwrap();
        let woken_here = poll_once(poll_fn(move |_| {
            let ((), held) = hold(|| other_waker.wake_by_ref());
            assert!(!held.any());
            Poll::<()>::Pending
        }));
        assert_eq!(woken_here, 0);
        assert_eq!(other_counter.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn nothing_is_held_outside_a_connection_or_after_a_panic() {
        let counter = Arc::new(Counting::default());
        let waker = Waker::from(counter.clone());
        let ((), held) = hold(|| waker.wake_by_ref());
        assert!(!held.any());
        assert_eq!(counter.0.load(Ordering::SeqCst), 1);

        // A panic inside a hold leaves the thread as it was.
        let woken = poll_once(poll_fn(|cx| {
            let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = hold(|| panic!("inside a hold"));
            }));
            assert!(caught.is_err());
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        }));
        assert_eq!(woken, 1);
        assert!(STATE.with(Cell::get).polling.is_null());
    }

    #[test]
    fn the_connection_is_held_once() {
        // An `async fn` wrapper kept the connection's state twice (its
        // argument and its pinned local): ~1 KB more per open connection.
        let big = async {
            let buffer = [1u8; 1000];
            std::future::ready(()).await;
            std::hint::black_box(buffer);
        };
        let inner = size_of_val(&big);
        let wrapped = run_connection(big);
        assert!(
            size_of_val(&wrapped) <= inner + 64,
            "{} for {inner}",
            size_of_val(&wrapped)
        );
    }
}
