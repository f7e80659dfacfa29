//! The open-file limit raised to its hard maximum at start. Every client
//! connection and every provider connection is a descriptor, and the soft
//! limit a service manager or shell hands out is often 1,024 while the
//! hard one is far higher: at 1,024 a few hundred streams (two descriptors
//! each) exhaust it. nginx (`worker_rlimit_nofile`) and Go's runtime raise
//! it the same way.

/// Descriptors kept out of the default connection cap: listeners, the
/// log, Redis, the configuration watcher, provider connections kept idle.
const RESERVED: u64 = 64;
/// The default cap never goes below this, however low the limit.
const MIN_CONNECTIONS: u64 = 16;

/// The default `server.max_connections`: half the open-file limit (a
/// stream holds two descriptors, the client's and the provider's) after
/// [`RESERVED`]; a very large cap when the limit cannot be read or is
/// unlimited.
pub fn default_max_connections() -> usize {
    let soft = current().map_or(libc::RLIM_INFINITY, |limit| limit.rlim_cur);
    if soft == libc::RLIM_INFINITY {
        return usize::MAX;
    }
    let cap = (soft.saturating_sub(RESERVED) / 2).max(MIN_CONNECTIONS);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

fn current() -> Result<libc::rlimit, std::io::Error> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; the limits before
/// and after when it changed, the error when it could not be raised.
pub fn raise_to_hard() -> Result<Option<(u64, u64)>, std::io::Error> {
    let mut limit = current()?;
    if limit.rlim_cur >= limit.rlim_max {
        return Ok(None);
    }
    let before = limit.rlim_cur;
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads the struct it is given.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Some((before, limit.rlim_max)))
}
