//! A pseudo-terminal for tests of what our binaries print on a terminal (`skoalactl plan watch`
//! redraws in place only when stdout is one).
//!
//! [`Pty::open`] gives a master/slave pair (both close-on-exec); the child gets the slave as
//! stdout, the test reads everything the child drew from the master ([`Pty::read_to_end`])
//! until the child and every copy of the slave are gone.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Stdio;

use anyhow::Context;

/// The two ends of a pseudo-terminal.
pub struct Pty {
    master: OwnedFd,
    slave: Option<OwnedFd>,
}

impl Pty {
    /// Opens a new pseudo-terminal.
    ///
    /// Both ends are close-on-exec from the moment they exist: the end-to-end tests share one
    /// process, and a child another test spawns at the same time must not inherit a copy of
    /// this terminal (the master would then never see the end while that child lives).
    /// `openpty(3)` cannot do that atomically, so the ends are opened by hand.
    #[allow(
        unsafe_code,
        reason = "libc has the only posix_openpt, grantpt and ptsname_r"
    )]
    pub fn open() -> anyhow::Result<Pty> {
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: posix_openpt only returns a new descriptor (or -1).
        let master = unsafe { libc::posix_openpt(flags) };
        if master < 0 {
            return Err(std::io::Error::last_os_error()).context("posix_openpt");
        }
        // SAFETY: the descriptor was just created and is owned by nobody else.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        let fd = master.as_raw_fd();
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: `fd` is a pty master; ptsname_r writes at most `name.len()` bytes into
        // `name`, NUL-terminated.
        let rc = unsafe {
            if libc::grantpt(fd) != 0 || libc::unlockpt(fd) != 0 {
                -1
            } else {
                libc::ptsname_r(fd, name.as_mut_ptr(), name.len())
            }
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("grantpt/unlockpt/ptsname_r");
        }
        // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated path.
        let path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) };
        // SAFETY: open with a valid C string returns a new descriptor (or -1).
        let slave = unsafe { libc::open(path.as_ptr(), flags) };
        if slave < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("open {}", path.to_string_lossy()));
        }
        // SAFETY: the descriptor was just created and is owned by nobody else.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        Ok(Pty {
            master,
            slave: Some(slave),
        })
    }

    /// The terminal end for the child's stdout. Call once; the parent keeps no copy, so the
    /// master sees the end when the child exits.
    pub fn take_slave(&mut self) -> anyhow::Result<Stdio> {
        let slave = self
            .slave
            .take()
            .context("the slave end was already taken")?;
        Ok(Stdio::from(slave))
    }

    /// Everything written to the terminal until the child side is closed (Linux reports EIO on
    /// the master then), read on a blocking thread.
    pub async fn read_to_end(self) -> anyhow::Result<String> {
        let mut file = File::from(self.master);
        let bytes = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match file.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        })
        .await
        .context("the pty reader thread")??;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// `text` without ANSI escape sequences (CSI: ESC `[` parameters, final byte).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_removed_and_text_kept() {
        assert_eq!(
            strip_ansi("\x1b[3A\r\x1b[J\x1b[?7lplan p → 1: workers\n\x1b[?7h"),
            "\rplan p → 1: workers\n"
        );
    }
}
