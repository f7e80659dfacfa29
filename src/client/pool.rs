//! Idle keep-alive connections to one origin, newest first. A connection is
//! checked (read once, without waiting) when it is taken out, and
//! connections idle past the timeout are dropped when the pool is touched;
//! a pool left alone is swept by a task of its own (started with its first
//! connection, ended with the pool), so a burst's connections, or ones the
//! provider has closed, are not held open while no request comes. Idle
//! times are kept on the coarse clock: the timeout is seconds, and a
//! precise reading on every check-in and checkout cost two clock reads per
//! request.
//!
//! Every pool is known to [`close_idle_everywhere`]: when the gateway runs
//! out of descriptors, the idle connections of every provider are closed to
//! free them (traffic moved from one provider to another would otherwise
//! leave the first one's idle connections holding what the second needs).

use super::conn::Connection;
use crate::coarse_clock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
    /// The sweeping task has been started.
    swept: AtomicBool,
}

/// Every pool alive (pools of old configurations are let go with them).
static POOLS: Mutex<Vec<Weak<Pool>>> = Mutex::new(Vec::new());

/// Closes every idle connection of every pool: the gateway's descriptors
/// ran out, and connections that serve no request are the ones to give
/// back. How many were closed. Callers take turns: one that finds nothing
/// left to close knows the descriptors another freed are free by then.
pub fn close_idle_everywhere() -> usize {
    let mut pools = POOLS.lock().expect("pools lock");
    pools.retain(|pool| pool.strong_count() > 0);
    let mut closed = 0;
    for pool in pools.iter().filter_map(Weak::upgrade) {
        // Taken out under the pool's lock, closed after it.
        let idle = std::mem::take(&mut *pool.idle.lock().expect("pool lock"));
        closed += idle.len();
        drop(idle);
    }
    closed
}

impl Pool {
    /// A new pool, known to [`close_idle_everywhere`].
    pub fn shared(timeout: Duration) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            idle: Mutex::new(Vec::new()),
            timeout,
            swept: AtomicBool::new(false),
        });
        let mut pools = POOLS.lock().expect("pools lock");
        pools.retain(|pool| pool.strong_count() > 0);
        pools.push(Arc::downgrade(&pool));
        drop(pools);
        pool
    }

    /// The most recently used connection that is still open, if any, and
    /// when it was taken out (on [`coarse_clock::monotonic`]).
    pub fn checkout(&self) -> Option<(Box<Connection>, Duration)> {
        let now = coarse_clock::monotonic();
        loop {
            let idle = self.idle.lock().expect("pool lock").pop()?;
            let Idle { mut conn, since } = idle;
            if now.saturating_sub(since) < self.timeout && conn.is_open_and_quiet() {
                return Some((conn, now));
            }
        }
    }

    /// Keeps a connection whose response has been read to the end.
    pub fn checkin(self: &Arc<Self>, mut conn: Box<Connection>) {
        // A plain load per request; the swap only once.
        if !self.swept.load(Ordering::Relaxed) && !self.swept.swap(true, Ordering::Relaxed) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(sweep_while_kept(Arc::downgrade(self), self.timeout / 6));
            }
        }
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

    /// Closes the connections idle past the timeout and those the provider
    /// has closed (or sent something unasked on).
    fn sweep(&self) {
        let now = coarse_clock::monotonic();
        let mut idle = self.idle.lock().expect("pool lock");
        idle.retain_mut(|i| {
            now.saturating_sub(i.since) < self.timeout && i.conn.is_open_and_quiet()
        });
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().expect("pool lock").len()
    }
}

/// Sweeps the pool every `every` for as long as something else keeps it
/// (the client of a configuration still in use).
async fn sweep_while_kept(pool: Weak<Pool>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep();
    }
}
