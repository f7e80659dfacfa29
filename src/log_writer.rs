//! The log's background writer: lines are appended to one shared buffer and a
//! dedicated thread writes what has gathered in one system call, at most
//! [`FLUSH_DELAY`] after a line arrives (sooner once [`FLUSH_SIZE`] bytes are
//! waiting).
//!
//! Why not a channel per line (`tracing-appender`): under load that woke the
//! writer thread for nearly every line, and its spin-then-yield wait took the
//! CPU from the request thread it shares a core with; a fifth of the CPU of a
//! small request went to logging it. Here a request pays one uncontended lock
//! and a copy. While lines keep coming the writer wakes on its own clock,
//! once per [`FLUSH_DELAY`], and nobody wakes it: a wake is a system call and
//! two context switches for the request thread. Only the first line after a
//! quiet spell (or a full buffer) wakes it.
//!
//! Nothing is dropped: when [`MAX_PENDING`] bytes are waiting (the output is
//! stuck), writers wait for the thread to make room, as a blocking write would.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a line may wait for others to join it.
pub const FLUSH_DELAY: Duration = Duration::from_millis(20);
/// Waiting bytes that wake the writer without waiting for [`FLUSH_DELAY`]
/// (from ~10,000 requests a second on). The writer shares a core with the
/// request thread, which waits while a batch is copied into the page
/// cache, so a batch is a stall for every request in flight: 256 KiB
/// batches were ~0.1 ms stalls every ~15 ms at 47,000 requests a second and
/// showed in p99; 64 KiB batches stall four times as often for a quarter of
/// the time (median p99 2.73 -> 2.49 ms over ten interleaved rounds, for
/// ~180 more wakes a second at that rate, each a few microseconds: CPU per
/// request 1.01x, within the rounds' noise).
pub const FLUSH_SIZE: usize = 64 * 1024;
/// Waiting bytes at which writers wait for the thread to catch up.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;
/// A buffer grown by a burst is given back once written.
const KEEP_CAPACITY: usize = 2 * FLUSH_SIZE;

/// Appends lines for the writer thread; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written every line.
pub struct LogWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread.
    wake_writer: Condvar,
    /// Wakes lines waiting for room.
    room: Condvar,
    /// Wakes sent to the writer (tests).
    #[cfg(test)]
    wakes: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct State {
    pending: Vec<u8>,
    /// The writer thread waits for a first line (no deadline).
    writer_idle: bool,
    closing: bool,
}

impl LogWriter {
    /// Starts the writer thread, writing to `sink`.
    pub fn spawn(sink: impl Write + Send + 'static) -> (LogWriter, LogWriterGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake_writer: Condvar::new(),
            room: Condvar::new(),
            #[cfg(test)]
            wakes: Default::default(),
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || write_loop(&shared, sink)
            })
            .expect("spawn the log writer thread");
        let guard = LogWriterGuard {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        (LogWriter { shared }, guard)
    }

    /// Appends whole lines (waits while [`MAX_PENDING`] bytes are waiting).
    pub fn append(&self, line: &[u8]) {
        let mut state = self.shared.lock();
        while state.pending.len() >= MAX_PENDING && !state.closing {
            state = self
                .shared
                .room
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        let before = state.pending.len();
        state.pending.extend_from_slice(line);
        let first_line = before == 0 && state.writer_idle;
        let filled = before < FLUSH_SIZE && state.pending.len() >= FLUSH_SIZE;
        drop(state);
        if first_line || filled {
            #[cfg(test)]
            self.shared
                .wakes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.shared.wake_writer.notify_one();
        }
    }
}

impl Shared {
    /// A panic while holding the lock leaves whole lines behind (appends
    /// are a single copy), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn write_loop(shared: &Shared, mut sink: impl Write) {
    let mut batch = Vec::new();
    // After a write the writer waits one more FLUSH_DELAY on its own clock
    // before it calls itself idle: lines that come meanwhile need no wake.
    let mut just_wrote = false;
    loop {
        let closing = {
            let mut state = shared.lock();
            let mut deadline = None;
            loop {
                if state.closing || state.pending.len() >= FLUSH_SIZE {
                    break;
                }
                if state.pending.is_empty() && !just_wrote {
                    state.writer_idle = true;
                    state = shared
                        .wake_writer
                        .wait(state)
                        .unwrap_or_else(|poisoned| poisoned.into_inner());
                    state.writer_idle = false;
                    continue;
                }
                let deadline = *deadline.get_or_insert_with(|| Instant::now() + FLUSH_DELAY);
                let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                    break;
                };
                state = shared
                    .wake_writer
                    .wait_timeout(state, left)
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .0;
            }
            std::mem::swap(&mut state.pending, &mut batch);
            state.closing
        };
        shared.room.notify_all();
        just_wrote = !batch.is_empty();
        if just_wrote {
            // Nowhere to report a failed log write; the next batch tries again.
            let _ = sink.write_all(&batch).and_then(|()| sink.flush());
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch.shrink_to(KEEP_CAPACITY);
            }
        }
        if closing && shared.lock().pending.is_empty() {
            return;
        }
    }
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake_writer.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A sink that hands every write to the test.
    struct Sink(mpsc::Sender<Vec<u8>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_single_line_is_written_without_waiting_for_more() {
        let (tx, rx) = mpsc::channel();
        let (mut writer, _guard) = LogWriter::spawn(Sink(tx));
        writer.write_all(b"one\n").unwrap();
        let written = rx.recv_timeout(Duration::from_secs(5)).expect("the line");
        assert_eq!(written, b"one\n");
        writer.write_all(b"two\n").unwrap();
        let written = rx.recv_timeout(Duration::from_secs(5)).expect("the line");
        assert_eq!(written, b"two\n", "an idle writer wakes for the next line");
    }

    #[test]
    fn a_steady_trickle_of_lines_does_not_wake_the_writer_each_time() {
        let (tx, rx) = mpsc::channel();
        let (mut writer, guard) = LogWriter::spawn(Sink(tx));
        // A line every 2 ms for ~0.4 s: about twenty FLUSH_DELAY periods.
        // Waking the writer for the first line of each period would be
        // ~20 wakes; waking on its own clock while lines keep coming, one
        // (a stalled test thread, a quiet spell, may add one each).
        let lines = 200;
        for i in 0..lines {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        let wakes = writer
            .shared
            .wakes
            .load(std::sync::atomic::Ordering::Relaxed);
        drop(guard);
        let all: Vec<u8> = rx.iter().collect::<Vec<_>>().concat();
        let expected: String = (0..lines).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(all).unwrap(), expected);
        assert!(wakes <= 5, "{wakes} wakes for {lines} lines");
    }

    #[test]
    fn lines_written_together_arrive_in_one_write_in_order() {
        let (tx, rx) = mpsc::channel();
        let (mut writer, guard) = LogWriter::spawn(Sink(tx));
        // Fewer bytes than FLUSH_SIZE, appended well inside FLUSH_DELAY.
        for i in 0..100 {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let writes: Vec<Vec<u8>> = rx.iter().collect();
        let all: Vec<u8> = writes.concat();
        let expected: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(all).unwrap(), expected);
        assert!(writes.len() <= 2, "{} writes for 100 lines", writes.len());
    }

    #[test]
    fn a_stuck_output_holds_writers_back_and_loses_nothing() {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(0);
        struct Blocking(mpsc::SyncSender<Vec<u8>>);
        impl Write for Blocking {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let _ = self.0.send(buf.to_vec());
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (writer, guard) = LogWriter::spawn(Blocking(tx));
        let line = vec![b'x'; 1023]
            .into_iter()
            .chain([b'\n'])
            .collect::<Vec<u8>>();
        let lines = 3 * MAX_PENDING / line.len();
        let producer = std::thread::spawn({
            let mut writer = writer.clone();
            let line = line.clone();
            move || {
                for _ in 0..lines {
                    writer.write_all(&line).unwrap();
                }
            }
        });
        // Nothing is read until the producer has had to wait for room.
        let waited = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let pending = writer.shared.lock().pending.len();
                if pending >= MAX_PENDING {
                    break true;
                }
                if Instant::now() > deadline {
                    break false;
                }
                std::thread::yield_now();
            }
        };
        assert!(waited, "the buffer fills up to its limit");
        assert!(!producer.is_finished(), "the producer waits for room");
        let mut received = 0;
        while received < lines * line.len() {
            received += rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a batch")
                .len();
        }
        producer.join().unwrap();
        drop(guard);
        assert_eq!(received, lines * line.len());
        assert!(
            writer.shared.lock().pending.is_empty(),
            "everything was written"
        );
    }
}
