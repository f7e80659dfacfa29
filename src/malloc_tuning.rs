//! glibc's malloc keeps a per-thread cache of only 7 freed blocks per size.
//! With dozens of requests in flight the gateway frees far more blocks of
//! one size at a time, and the overflow goes through malloc's slower shared
//! bins: at 64 connections that was ~8% of the instructions of a request.
//! The cache size is a glibc tunable, read only when a process starts, so
//! the gateway sets it by executing itself again (same process id, same
//! arguments) when `GLIBC_TUNABLES` is not set. Setting `GLIBC_TUNABLES`
//! (to anything, even empty) leaves the choice to the operator.

/// The tunables the gateway starts with.
pub const TUNABLES: &str = "glibc.malloc.tcache_count=128";

/// The environment variable glibc reads its tunables from.
pub const VARIABLE: &str = "GLIBC_TUNABLES";

/// Executes the running binary again with [`TUNABLES`] set, unless
/// `GLIBC_TUNABLES` is already set. Returns only if it did not (the reason,
/// when executing failed; the gateway then runs with glibc's defaults).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn restart_with_tunables() -> Option<std::io::Error> {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(VARIABLE).is_some() {
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

/// Other platforms and C libraries: nothing to do.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn restart_with_tunables() -> Option<std::io::Error> {
    None
}
