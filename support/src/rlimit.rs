//! The open-files limit of a process that holds a socket per peer: the coordinator (one per
//! agent) and the load generator (one per simulated agent). The usual soft limit (1,024) is
//! far below the fleets they are built for, while the hard limit usually is not.

/// The soft `RLIMIT_NOFILE`: how many descriptors this process may hold open now.
pub fn open_files() -> std::io::Result<u64> {
    Ok(get()?.rlim_cur)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_open_files() -> std::io::Result<u64> {
    let mut lim = get()?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        #[allow(unsafe_code, reason = "libc has the only setrlimit")]
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

fn get() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    #[allow(unsafe_code, reason = "libc has the only getrlimit")]
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(lim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_is_what_open_files_reports() {
        let hard = get().expect("getrlimit").rlim_max;
        let raised = raise_open_files().expect("raise");
        assert_eq!(raised, hard);
        assert_eq!(open_files().expect("read"), hard);
    }
}
