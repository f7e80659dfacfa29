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
//! Lines are dropped, never waited for, once [`MAX_PENDING`] bytes are
//! waiting (the output is stuck: a log collector that stopped reading).
//! Waiting would park the runtime's threads on the lock, and with them every
//! request, `/healthz` and the drain at shutdown, for as long as the output
//! stays stuck. An output that fails (a full disk, a pipe whose reader
//! died) loses the lines it refused. Either way the lines are counted
//! ([`dropped_lines`], a metric) and, once the output takes lines again, a
//! warning says how many; the first failure of an output that was fine is
//! told on stderr, as the log itself cannot carry it.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
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
/// Waiting bytes past which lines are dropped.
pub const MAX_PENDING: usize = 8 * 1024 * 1024;
/// At exit, how long the output may take nothing before the lines still
/// waiting are given up: a stuck output must not keep the process alive.
const EXIT_STALL: Duration = Duration::from_secs(2);

/// Lines dropped since the process started, every writer's.
static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// Log lines dropped since the process started because the output did not
/// take them (see the module's text).
pub fn dropped_lines() -> u64 {
    DROPPED_LINES.load(Ordering::Relaxed)
}
/// A buffer grown by a burst is given back once written.
const KEEP_CAPACITY: usize = 2 * FLUSH_SIZE;

/// Appends lines for the writer thread; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, after it has written every line
/// (unless the output has taken nothing for [`EXIT_STALL`]).
pub struct LogWriterGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer thread.
    wake_writer: Condvar,
    /// Wakes the guard waiting at exit when the writer thread ends.
    finished: Condvar,
    /// Bytes written so far: the guard's sign that the output moves.
    written: AtomicU64,
    /// Lines this writer dropped or lost (the metric counts every
    /// writer's; tests count their own).
    dropped_here: AtomicU64,
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
    /// The writer thread has written its last batch.
    done: bool,
    /// Lines dropped since the last warning about them.
    dropped: u64,
}

impl LogWriter {
    /// Starts the writer thread, writing to `sink`.
    pub fn spawn(sink: impl Write + Send + 'static) -> (LogWriter, LogWriterGuard) {
        Self::spawn_telling(sink, std::io::stderr())
    }

    /// [`Self::spawn`], telling `notices` when the output fails.
    fn spawn_telling(
        sink: impl Write + Send + 'static,
        notices: impl Write + Send + 'static,
    ) -> (LogWriter, LogWriterGuard) {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake_writer: Condvar::new(),
            finished: Condvar::new(),
            written: AtomicU64::new(0),
            dropped_here: AtomicU64::new(0),
            #[cfg(test)]
            wakes: Default::default(),
        });
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || write_loop(&shared, sink, notices)
            })
            .expect("spawn the log writer thread");
        let guard = LogWriterGuard {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        (LogWriter { shared }, guard)
    }

    /// Appends whole lines; drops them while [`MAX_PENDING`] bytes are
    /// waiting.
    pub fn append(&self, line: &[u8]) {
        let mut state = self.shared.lock();
        if state.pending.len() >= MAX_PENDING {
            state.dropped += 1;
            self.shared.count_dropped(1);
            return;
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
    fn count_dropped(&self, lines: u64) {
        DROPPED_LINES.fetch_add(lines, Ordering::Relaxed);
        self.dropped_here.fetch_add(lines, Ordering::Relaxed);
    }

    /// A panic while holding the lock leaves whole lines behind (appends
    /// are a single copy), so a poisoned lock is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn write_loop(shared: &Shared, mut sink: impl Write, mut notices: impl Write) {
    let mut batch = Vec::new();
    // After a write the writer waits one more FLUSH_DELAY on its own clock
    // before it calls itself idle: lines that come meanwhile need no wake.
    let mut just_wrote = false;
    // Lines lost and not yet told of in the log, and whether the output's
    // last write failed (the warning waits for one that does not).
    let mut untold: u64 = 0;
    let mut failing = false;
    // The output took part of a line and then failed: the next bytes it
    // takes begin with a line end, so the first line after it recovers is
    // not glued to that fragment.
    let mut fragment_left = false;
    loop {
        let (closing, dropped) = {
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
            (state.closing, std::mem::take(&mut state.dropped))
        };
        untold += dropped;
        just_wrote = !batch.is_empty();
        if just_wrote {
            let mut failure = None;
            // A chunk at a time, so the guard at exit sees the output move.
            for chunk in batch.chunks(FLUSH_SIZE) {
                if fragment_left && write_chunk(&mut sink, b"\n").is_ok() {
                    fragment_left = false;
                }
                if let Err((err, lost, mid_line)) = write_chunk(&mut sink, chunk) {
                    shared.count_dropped(lost);
                    untold += lost;
                    fragment_left |= mid_line;
                    failure.get_or_insert(err);
                }
                shared
                    .written
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            if let Err(err) = sink.flush() {
                failure.get_or_insert(err);
            }
            match failure {
                Some(err) if !failing => {
                    failing = true;
                    // Nowhere else to say it; if stderr fails too, nothing.
                    // One write, so the notice stays one line.
                    let notice = format!(
                        "kimi-gateway: writing the log to its output failed ({err}): log lines \
                         are dropped, and counted in kimi_gateway_log_lines_dropped_total, \
                         until it takes them again\n"
                    );
                    let _ = notices.write_all(notice.as_bytes());
                }
                Some(_) => {}
                None => failing = false,
            }
            batch.clear();
            if batch.capacity() > KEEP_CAPACITY {
                batch.shrink_to(KEEP_CAPACITY);
            }
        }
        if untold > 0 && !failing {
            // Through the subscriber, in the log's own format; it comes
            // back to this thread as the next batch's first line.
            tracing::warn!(
                dropped = std::mem::take(&mut untold),
                "log lines dropped: the output did not take them (stuck, full or closed)"
            );
        }
        let mut state = shared.lock();
        if closing && state.pending.is_empty() {
            state.done = true;
            shared.finished.notify_all();
            return;
        }
    }
}

/// Writes `chunk` to `sink`; when the output fails, the error, how many
/// of the lines ending in the chunk it did not take whole, and whether it
/// took part of one.
fn write_chunk(sink: &mut impl Write, chunk: &[u8]) -> Result<(), (std::io::Error, u64, bool)> {
    let mut rest = chunk;
    while !rest.is_empty() {
        let err = match sink.write(rest) {
            Ok(0) => std::io::Error::from(std::io::ErrorKind::WriteZero),
            Ok(written) => {
                rest = &rest[written..];
                continue;
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => err,
        };
        let lost = rest.iter().filter(|&&byte| byte == b'\n').count() as u64;
        let mid_line = rest.len() < chunk.len() && chunk[chunk.len() - rest.len() - 1] != b'\n';
        return Err((err, lost, mid_line));
    }
    Ok(())
}

impl Drop for LogWriterGuard {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closing = true;
        self.shared.wake_writer.notify_one();
        let mut written = self.shared.written.load(Ordering::Relaxed);
        while !state.done {
            let timed_out;
            (state, timed_out) = self
                .shared
                .finished
                .wait_timeout(state, EXIT_STALL)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let now = self.shared.written.load(Ordering::Relaxed);
            if timed_out.timed_out() && now == written && !state.done {
                // The output is stuck: leave the thread and its lines.
                return;
            }
            written = now;
        }
        drop(state);
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

    /// An output that fails while `failing` is set, after taking `take`
    /// bytes of the write that fails (0: none).
    struct Failing {
        lines: mpsc::Sender<Vec<u8>>,
        failing: Arc<std::sync::atomic::AtomicBool>,
        take: usize,
    }

    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = self.lines.send(buf.to_vec());
                return Ok(buf.len());
            }
            if self.take > 0 && buf.len() > self.take {
                let taken = std::mem::take(&mut self.take);
                let _ = self.lines.send(buf[..taken].to_vec());
                return Ok(taken);
            }
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_an_output_refuses_are_counted_and_its_failure_told_once() {
        let (lines_tx, lines) = mpsc::channel();
        let (notices_tx, notices) = mpsc::channel();
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sink = Failing {
            lines: lines_tx,
            failing: Arc::clone(&failing),
            // Half of the first line, then the pipe breaks.
            take: 3,
        };
        let (mut writer, guard) = LogWriter::spawn_telling(sink, Sink(notices_tx));
        writer.write_all(b"first\nsecond\n").unwrap();
        // The writer's own first notice: the output failed.
        let notice = notices.recv_timeout(Duration::from_secs(5)).unwrap();
        let notice = String::from_utf8(notice).unwrap();
        assert!(notice.contains("broken pipe"), "{notice}");
        // The line cut in the middle and the one after it: two lost.
        assert_eq!(lines.recv().unwrap(), b"fir");
        let shared = Arc::clone(&writer.shared);
        let dropped = || shared.dropped_here.load(Ordering::Relaxed);
        assert_eq!(dropped(), 2);
        // Another failed batch is counted, not told again.
        writer.write_all(b"third\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while dropped() < 3 {
            assert!(std::time::Instant::now() < deadline, "not counted");
            std::thread::sleep(Duration::from_millis(5));
        }
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        writer.write_all(b"fourth\n").unwrap();
        // The cut line is ended first: the next line stands on its own.
        let mut recovered = Vec::new();
        while recovered.len() < b"\nfourth\n".len() {
            recovered.extend(lines.recv_timeout(Duration::from_secs(5)).unwrap());
        }
        assert_eq!(recovered, b"\nfourth\n");
        drop(guard);
        assert!(notices.try_recv().is_err(), "told once");
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
        // Gaps of a flush period or more between lines: after each, a wake
        // for the next line is right.
        let mut quiet_spells = 0;
        let mut last = std::time::Instant::now();
        for i in 0..lines {
            writer.write_all(format!("line {i}\n").as_bytes()).unwrap();
            std::thread::sleep(Duration::from_millis(2));
            let now = std::time::Instant::now();
            quiet_spells += usize::from(now - last >= FLUSH_DELAY);
            last = now;
        }
        let wakes = writer
            .shared
            .wakes
            .load(std::sync::atomic::Ordering::Relaxed);
        drop(guard);
        let all: Vec<u8> = rx.iter().collect::<Vec<_>>().concat();
        let expected: String = (0..lines).map(|i| format!("line {i}\n")).collect();
        assert_eq!(String::from_utf8(all).unwrap(), expected);
        assert!(
            wakes <= 2 + quiet_spells,
            "{wakes} wakes for {lines} lines ({quiet_spells} quiet spells)"
        );
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

    /// A sink whose writes wait until the test takes them.
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

    fn line_of(len: usize) -> Vec<u8> {
        let mut line = vec![b'x'; len - 1];
        line.push(b'\n');
        line
    }

    #[test]
    fn a_stuck_output_never_holds_a_writer_back_and_drops_what_does_not_fit() {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(0);
        let (writer, guard) = LogWriter::spawn(Blocking(tx));
        let line = line_of(1024);
        let lines = 3 * MAX_PENDING / line.len();
        // Nothing is read meanwhile: the writer thread is stuck in its
        // first write, and every append still returns.
        let producer = std::thread::spawn({
            let mut writer = writer.clone();
            let line = line.clone();
            move || {
                for _ in 0..lines {
                    writer.write_all(&line).unwrap();
                }
            }
        });
        producer.join().unwrap();
        // Every drop is counted; the count the writer thread has not yet
        // taken for its warning is part of them (a thread that started
        // late took the drops before its first batch).
        let dropped = writer.shared.dropped_here.load(Ordering::Relaxed);
        assert!(dropped_lines() >= dropped, "the metric counts them too");
        // Kept: at most the batch the writer thread is stuck on and
        // MAX_PENDING more.
        assert!(
            dropped as usize >= lines - 2 * MAX_PENDING / line.len(),
            "{dropped}"
        );
        assert!(dropped >= writer.shared.lock().dropped);
        assert!(writer.shared.lock().pending.len() <= MAX_PENDING);
        // What was kept is written whole, in lines, once the output moves.
        let mut received = Vec::new();
        let drain = std::thread::spawn(move || {
            for write in rx.iter() {
                received.extend_from_slice(&write);
            }
            received
        });
        drop(guard);
        let received = drain.join().unwrap();
        let kept = lines - dropped as usize;
        assert_eq!(received.len(), kept * line.len());
        assert!(received.chunks(line.len()).all(|l| l == line.as_slice()));
        assert_eq!(writer.shared.lock().dropped, 0, "counted into a warning");
    }

    #[test]
    fn exit_does_not_wait_for_an_output_that_takes_nothing() {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(0);
        let (mut writer, guard) = LogWriter::spawn(Blocking(tx));
        writer.write_all(b"one\n").unwrap();
        writer.write_all(b"two\n").unwrap();
        // The writer thread is stuck in its write: the guard gives up
        // after EXIT_STALL without progress.
        let started = Instant::now();
        drop(guard);
        assert!(started.elapsed() >= EXIT_STALL);
        assert!(started.elapsed() < EXIT_STALL * 3);
        drop(rx);
    }
}
