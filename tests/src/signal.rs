//! Sending a signal to a process, as `kill` from a shell does: the tests stop, freeze and
//! resume the processes they started (`SIGTERM`, `SIGSTOP`, `SIGCONT`) and press Ctrl-C for a
//! whole process group (`SIGINT` to `-pgid`).

/// Sends `signal` (`libc::SIGTERM`, ...) to `pid`; a negative `pid` names a process group.
pub fn send(pid: i32, signal: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    #[allow(unsafe_code, reason = "libc has the only kill(2)")]
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
