//! Idle keep-alive connections to one origin, newest first. No task watches
//! them: a connection is checked (polled once) when it is taken out, and
//! connections idle past the timeout are dropped when the pool is touched.

use super::{Io, OutgoingBody};
use hyper::client::conn::http1;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

/// More idle connections than this are closed instead of kept.
const MAX_IDLE: usize = 1024;

/// One HTTP/1.1 connection: the handle requests are queued on and the state
/// machine that must be polled to move bytes.
pub struct Connection {
    pub sender: http1::SendRequest<OutgoingBody>,
    pub driver: http1::Connection<Io, OutgoingBody>,
    /// The driver completed (closed or failed) and must not be polled again.
    pub finished: bool,
}

impl Connection {
    pub fn new(
        sender: http1::SendRequest<OutgoingBody>,
        driver: http1::Connection<Io, OutgoingBody>,
    ) -> Self {
        Connection {
            sender,
            driver,
            finished: false,
        }
    }

    /// Polls the driver once without waiting, so it notices a finished
    /// response or a close from the other side; then says whether the
    /// connection can take another request.
    pub fn settle_and_check(&mut self) -> bool {
        if self.finished {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        if Pin::new(&mut self.driver).poll(&mut cx).is_ready() {
            self.finished = true;
            return false;
        }
        self.sender.is_ready()
    }
}

/// Connections are boxed: hyper's connection state is a few kilobytes, and
/// it moves between the pool and a response body on every request.
struct Idle {
    conn: Box<Connection>,
    since: Instant,
}

pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    timeout: Duration,
}

impl Pool {
    pub fn new(timeout: Duration) -> Self {
        Pool {
            idle: Mutex::new(Vec::new()),
            timeout,
        }
    }

    /// The most recently used connection that is still open, if any.
    pub fn checkout(&self) -> Option<Box<Connection>> {
        loop {
            let idle = self.idle.lock().expect("pool lock").pop()?;
            let Idle { mut conn, since } = idle;
            if since.elapsed() < self.timeout && conn.settle_and_check() {
                return Some(conn);
            }
        }
    }

    /// Keeps a connection whose response has been read to the end.
    pub fn checkin(&self, mut conn: Box<Connection>) {
        if !conn.settle_and_check() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().expect("pool lock");
        // The oldest are at the front: drop the ones past their time.
        let expired = idle
            .iter()
            .take_while(|i| now.duration_since(i.since) >= self.timeout)
            .count();
        idle.drain(..expired);
        if idle.len() < MAX_IDLE {
            idle.push(Idle { conn, since: now });
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }
}
