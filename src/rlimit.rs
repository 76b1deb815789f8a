//! The file-descriptor limit: raised to the hard limit at start (protocol 4), read to derive
//! `http.max_connections`.

/// (soft, hard) `RLIMIT_NOFILE`.
pub fn nofile() -> (u64, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct we pass, which lives on our stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return (1024, 1024);
    }
    (lim.rlim_cur, lim.rlim_max)
}

/// Raises the soft limit to the hard limit; returns (soft before, soft after, hard).
pub fn raise_nofile() -> (u64, u64, u64) {
    let (soft, hard) = nofile();
    if soft < hard {
        let lim = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: setrlimit only reads the struct we pass, which lives on our stack.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    }
    let (after, hard) = nofile();
    (soft, after, hard)
}
