//! glibc's malloc keeps a per-thread cache of only 7 freed blocks per size.
//! With dozens of requests in flight the gateway frees far more blocks of
//! one size at a time, and the overflow goes through malloc's slower shared
//! bins: at 64 connections that was ~8% of the instructions of a request.
//! The cache size is a glibc tunable, read only when a process starts, so
//! the gateway sets it by executing itself again (same process id, same
//! arguments) when `GLIBC_TUNABLES` is not set. Setting `GLIBC_TUNABLES`
//! (to anything, even empty) leaves the choice to the operator.
//!
//!
//! The second tunable holds malloc's mmap threshold at its starting value,
//! 128 KiB. Left to itself, glibc raises the threshold to the size of each
//! mmapped block it frees (up to 32 MiB) and its trim threshold to twice
//! that: after the first large plain answer, later ones came from the
//! worker threads' arenas, whose free tops neither malloc nor
//! `malloc_trim` give back, and an idle gateway held 50-100 MB after a few
//! rounds of 16-20 MB answers (and its peak grew with each round). Held,
//! every block of 128 KiB or more is mapped for itself and unmapped when
//! freed; the hot path's blocks are smaller (CPU per request unchanged at
//! 64 connections, small and 1 MiB request bodies alike).
//!
//! Executing `/proc/self/exe` (the running file, even if it was replaced on
//! disk since) would leave the process named `exe` in `ps`, `top` and
//! `pkill`; the restarted process takes its own name back.

/// The tunables the gateway starts with.
pub const TUNABLES: &str = "glibc.malloc.tcache_count=128:glibc.malloc.mmap_threshold=131072";

/// The environment variable glibc reads its tunables from.
pub const VARIABLE: &str = "GLIBC_TUNABLES";

/// Executes the running binary again with [`TUNABLES`] set, unless
/// `GLIBC_TUNABLES` is already set. Returns only if it did not (the reason,
/// when executing failed; the gateway then runs with glibc's defaults).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn restart_with_tunables() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(VARIABLE).is_some() {
        restore_process_name();
        return None;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_default();
    let error = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env(VARIABLE, TUNABLES)
        .exec();
    Some(error)
}

/// After a restart through `/proc/self/exe` the kernel names the process
/// `exe`; name it after the file it was started as (`argv[0]`), as the
/// first start was.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn restore_process_name() {
    use std::os::unix::ffi::OsStrExt;
    let Ok(current) = std::fs::read("/proc/self/comm") else {
        return;
    };
    if current.trim_ascii_end() != b"exe" {
        return;
    }
    let Some(arg0) = std::env::args_os().next() else {
        return;
    };
    let Some(file_name) = std::path::Path::new(&arg0).file_name() else {
        return;
    };
    // The kernel keeps 15 bytes of a name; a longer one is cut, as exec does.
    let mut name = file_name.as_bytes()[..file_name.len().min(15)].to_vec();
    name.push(0);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes
    // from the pointer, which `name` provides and outlives the call.
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
}

/// Other platforms and C libraries: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn restart_with_tunables() -> Option<std::io::Error> {
    None
}
