//! The open-file limit raised to its hard maximum at start. Every client
//! connection and every provider connection is a descriptor, and the soft
//! limit a service manager or shell hands out is often 1,024 while the
//! hard one is far higher: at 1,024 a few hundred streams (two descriptors
//! each) exhaust it. nginx (`worker_rlimit_nofile`) and Go's runtime raise
//! it the same way.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; the limits before
/// and after when it changed, the error when it could not be raised.
pub fn raise_to_hard() -> Result<Option<(u64, u64)>, std::io::Error> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
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
