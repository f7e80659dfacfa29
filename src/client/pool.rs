//! Idle keep-alive connections to one origin, newest first. No task watches
//! them: a connection is checked (read once, without waiting) when it is
//! taken out, and connections idle past the timeout are dropped when the
//! pool is touched. Idle times are kept on the coarse clock: the timeout is
//! seconds, and a precise reading on every check-in and checkout cost two
//! clock reads per request.

use super::conn::Connection;
use crate::coarse_clock;
use std::sync::Mutex;
use std::time::Duration;

/// More idle connections than this are closed instead of kept.
const MAX_IDLE: usize = 1024;

/// Connections are boxed: they move between the pool and a response body on
/// every request.
struct Idle {
    conn: Box<Connection>,
    /// When it was checked in, on [`coarse_clock::monotonic`].
    since: Duration,
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
        let now = coarse_clock::monotonic();
        loop {
            let idle = self.idle.lock().expect("pool lock").pop()?;
            let Idle { mut conn, since } = idle;
            if now.saturating_sub(since) < self.timeout && conn.is_open_and_quiet() {
                return Some(conn);
            }
        }
    }

    /// Keeps a connection whose response has been read to the end.
    pub fn checkin(&self, mut conn: Box<Connection>) {
        conn.release_waker();
        let now = coarse_clock::monotonic();
        let mut idle = self.idle.lock().expect("pool lock");
        // The oldest are at the front: drop the ones past their time.
        let expired = idle
            .iter()
            .take_while(|i| now.saturating_sub(i.since) >= self.timeout)
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
