//! Hot reload: SIGHUP or a change of the config file re-reads the file and
//! the environment, validates the result whole, and swaps it in atomically.
//! Requests in flight finish on the configuration they started with; the
//! circuit state of unchanged targets carries over; an invalid file keeps
//! the old configuration and every problem is logged.

use crate::config;
use crate::limits::StoreCheck;
use crate::state::{AppState, ReloadStatus};
use notify::{RecursiveMode, Watcher};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What reading the config file gave: its contents, or why it could not
/// be read as a reload reads it (missing, not a regular file, too large):
/// a file that changes from one unreadable state to another reloads too,
/// so `/readyz` and the log name the problem it has now.
type Outcome = Result<Vec<u8>, String>;

/// The config file as last read for a reload (`None`: not read yet),
/// shared by SIGHUP and the file watcher so that one edit followed by a
/// SIGHUP reloads once, not once for each.
type LastRead = std::sync::Arc<std::sync::Mutex<Option<Outcome>>>;

/// Where a reload reads the configuration's text.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// The config file (SIGHUP, a change of the file).
    File,
    /// The text the running configuration was built from (a catalogue
    /// refresh: the file may be caught part-way through a write, which
    /// only the file's watcher waits out).
    Running,
}

/// Reloads now; returns whether the new configuration was taken.
pub async fn reload(state: &AppState, trigger: &str, reading: Reading) -> bool {
    let _one_at_a_time = state.reloading.lock().await;
    let current = state.config();
    // Built on a blocking thread: a file of many thousands of models or
    // providers takes a while to check, and the runtime's workers keep
    // serving requests (health probes included) meanwhile.
    let built = {
        let current = current.clone();
        let env = state.env.clone();
        tokio::task::spawn_blocking(move || match reading {
            Reading::File => config::load_reusing(current.source.as_deref(), Some(&current), &*env),
            Reading::Running => config::rebuild(&current, &*env),
        })
        .await
        .unwrap_or_else(|err| {
            Err(config::ConfigErrors(vec![config::ConfigProblem::new(
                "",
                format!("building the configuration failed unexpectedly: {err}"),
            )]))
        })
    };
    // Checked against `--listen` as at start: a file the next restart
    // would refuse is refused now.
    let result = built.and_then(|new| {
        config::check_listen_override(&new, state.listen_override.get().copied()).map(|()| new)
    });
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // A file caught half-written (truncated, not yet filled) is a valid,
    // empty configuration: taken, it would open the gateway to anyone.
    // Opening a gateway that has keys takes a restart.
    let result = match result {
        Ok(new) if new.keys.is_empty() && !current.keys.is_empty() => {
            Err(config::ConfigErrors(vec![config::ConfigProblem::new(
                "keys",
                "the new configuration has no client keys, which would open the gateway to \
                 anyone; a reload does not open a gateway that has keys (restart it to run \
                 it open)",
            )]))
        }
        other => other,
    };
    // A Redis that answers but refuses the gateway (password, database,
    // ACL) is a mistake in the new configuration, not an outage to ride
    // out: the running configuration stays.
    let result = match result {
        Ok(new) => {
            // The check's calls are counted with the store's others.
            new.limits.attach_metrics(&state.metrics.store);
            match new.limits.check_store().await {
                StoreCheck::Refused(reason) => {
                    Err(config::ConfigErrors(vec![config::ConfigProblem::new(
                        "limits.redis_url",
                        format!("Redis refused the gateway: {reason}"),
                    )]))
                }
                check => Ok((new, check)),
            }
        }
        Err(errors) => Err(errors),
    };
    match result {
        Ok((new, store_check)) => {
            // Against what runs, not the file before: a change still
            // waiting for a restart is said again, one set back is not.
            let running = &state.started_with;
            if new.server.listen != running.listen && state.listen_override.get().is_none() {
                tracing::warn!(listen = %new.server.listen, running = %running.listen, "server.listen differs from the address the gateway listens on: it takes effect at the next restart, and `kimi-gateway healthcheck --config` probes the new address meanwhile (give it --addr)");
            }
            if new.effective_max_connections() != running.max_connections {
                tracing::warn!(
                    "server.max_connections differs from the cap the gateway started with: it takes effect at the next restart"
                );
            }
            if new.server.client_send_buffer != running.client_send_buffer {
                tracing::warn!(
                    "server.client_send_buffer_bytes differs from the one the gateway started with: it takes effect at the next restart"
                );
            }
            if new.server.metrics_listen != running.metrics_listen {
                tracing::warn!(
                    "server.metrics_listen differs from the one the gateway started with: it takes effect at the next restart"
                );
            }
            let fingerprint = new.fingerprint.clone();
            // A changed Redis setting makes a new connection: made before
            // the swap, so `/readyz` does not report the store unreachable
            // while it is made (within the check's budget: a Redis that
            // did not answer the check is an outage, not waited for again).
            new.limits.connect_after(store_check).await;
            state.replace_config(new);
            state.metrics.reloads.with_label_values(&["success"]).inc();
            tracing::info!(trigger, config = %fingerprint, result = "success", "configuration reloaded");
            state.config().log_notes();
            // A rebuild of the running text says nothing of the file: a
            // rejected file stays reported until a reload of it succeeds,
            // and a file reload's time and fingerprint stay its own.
            if reading == Reading::File {
                state.metrics.last_reload_successful.set(1);
                state.set_reload_status(ReloadStatus {
                    result: "success",
                    at,
                    config: fingerprint,
                    problems: Vec::new(),
                });
            }
            true
        }
        Err(errors) => {
            state.metrics.reloads.with_label_values(&["failure"]).inc();
            let problems: Vec<String> = errors.0.iter().map(ToString::to_string).collect();
            for problem in &problems {
                tracing::error!(trigger, problem = %problem, "configuration reload rejected");
            }
            tracing::error!(trigger, config = %current.fingerprint, result = "failure", "kept the previous configuration");
            if reading == Reading::Running {
                // The file is not at fault: the gauge and `last_reload`
                // keep telling of the file's last reload.
                return false;
            }
            state.metrics.last_reload_successful.set(0);
            state.set_reload_status(ReloadStatus {
                result: "failure",
                at,
                config: current.fingerprint.clone(),
                problems,
            });
            false
        }
    }
}

/// Starts the SIGHUP listener and, when the config came from a file, a
/// watcher on it. Both live as long as the runtime.
pub fn spawn_triggers(state: AppState) {
    let path = state.config().source.clone();
    let last_read = LastRead::default();
    if let Some(path) = &path {
        *last_read.lock().expect("last read") = Some(read_outcome(path));
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        // Registered here, not in the task, so a SIGHUP that arrives right
        // after start-up reloads instead of killing the process.
        match signal(SignalKind::hangup()) {
            Ok(mut hangup) => {
                let state = state.clone();
                let (path, last_read) = (path.clone(), last_read.clone());
                tokio::spawn(async move {
                    while hangup.recv().await.is_some() {
                        if let Some(path) = &path {
                            *last_read.lock().expect("last read") = Some(read_outcome(path));
                        }
                        reload(&state, "sighup", Reading::File).await;
                    }
                });
            }
            Err(_) => {
                tracing::warn!("cannot listen for SIGHUP; reload by editing the config file")
            }
        }
    }
    if let Some(path) = path {
        watch_file(state, path, last_read);
    }
}

/// How long after a change in the directory the file is read: a burst of
/// writes (an editor's, a ConfigMap swap) is over by then.
const SETTLE: Duration = Duration::from_millis(150);
/// The file is also read this often, events or not: a change no event
/// announced (the directory itself replaced, a file system without
/// events) is picked up within this.
const LOOK_AGAIN: Duration = Duration::from_secs(2);
/// How long new contents must stay the same before they are loaded: a
/// file caught part-way through a slow write in place (`cat` from a pipe,
/// `kubectl cp`) can be valid TOML that has lost its last tables, such as
/// a key's `models` list or limits.
const HOLD_STILL: Duration = Duration::from_secs(1);
/// How often the file is read while it is waited on to hold still.
const READ_AGAIN: Duration = Duration::from_millis(100);
/// The longest wait for contents that never hold still; then the latest
/// are loaded.
const LONGEST_WAIT: Duration = Duration::from_secs(10);

/// What reading the config file found.
#[derive(PartialEq)]
enum FileRead {
    Read(Outcome),
    /// Out of descriptors: says nothing about the file.
    Unknown,
}

/// The config file's bytes, read as a reload reads them (a regular file
/// of bounded size).
fn read_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    config::bounded_file::read(path, config::bounded_file::MAX_CONFIG_BYTES)
}

fn read_outcome(path: &std::path::Path) -> Outcome {
    read_file(path).map_err(|err| err.to_string())
}

fn read_config_file(path: &std::path::Path) -> FileRead {
    match read_file(path) {
        Ok(text) => FileRead::Read(Ok(text)),
        Err(err) if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
            FileRead::Unknown
        }
        Err(err) => FileRead::Read(Err(err.to_string())),
    }
}

/// Reads the file until what it gives has stayed `first` (or what it
/// changed to since) for [`HOLD_STILL`], at most [`LONGEST_WAIT`]; returns
/// that.
async fn held_still(path: &std::path::Path, first: Outcome) -> Outcome {
    let started = tokio::time::Instant::now();
    let mut contents = first;
    let mut since = started;
    while since.elapsed() < HOLD_STILL && started.elapsed() < LONGEST_WAIT {
        tokio::time::sleep(READ_AGAIN).await;
        if let FileRead::Read(now) = read_config_file(path)
            && now != contents
        {
            contents = now;
            since = tokio::time::Instant::now();
        }
    }
    contents
}

/// Watches the file's directory and reloads when the file's contents
/// differ from the last ones seen, once they have held still for
/// [`HOLD_STILL`]: looked at [`SETTLE`] after a change in the directory,
/// and every [`LOOK_AGAIN`] in any case. Any change in the
/// directory counts, not only events naming the file: editors replace
/// files by renaming, and a Kubernetes ConfigMap volume swaps a `..data`
/// symlink, so the file's own name never shows up in an event. The wait
/// after a change is not restarted by later ones, so a log file written
/// beside the config every few milliseconds cannot hold a reload off.
/// Comparing contents keeps other files' changes from reloading.
fn watch_file(state: AppState, path: PathBuf, last_read: LastRead) {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !event.kind.is_access() {
            let _ = tx.send(());
        }
    })
    .and_then(|mut watcher| {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    });
    let watcher = match watcher {
        Ok(watcher) => Some(watcher),
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "cannot watch the config file's directory; it is read every 2 s instead");
            None
        }
    };
    tokio::spawn(async move {
        let _watcher = watcher;
        let mut look_again = tokio::time::interval(LOOK_AGAIN);
        look_again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        look_again.tick().await;
        loop {
            tokio::select! {
                Some(()) = rx.recv() => {
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = look_again.tick() => {}
            }
            let FileRead::Read(now) = read_config_file(&path) else {
                continue;
            };
            if last_read.lock().expect("last read").as_ref() == Some(&now) {
                continue;
            }
            let now = held_still(&path, now).await;
            // The events of the wait are answered by it.
            while rx.try_recv().is_ok() {}
            let changed = {
                let mut seen = last_read.lock().expect("last read");
                let changed = seen.as_ref() != Some(&now);
                *seen = Some(now);
                changed
            };
            if changed {
                reload(&state, "file_change", Reading::File).await;
            }
        }
    });
}
