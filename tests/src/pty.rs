//! A pseudo-terminal for tests of what our binaries print on a terminal (`skoalactl plan watch`
//! redraws in place only when stdout is one).
//!
//! [`Pty::open`] gives a master/slave pair; the child gets the slave as stdout, the test reads
//! everything the child drew from the master ([`Pty::read_to_end`]) until the child and every
//! copy of the slave are gone.

use std::fs::File;
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;

use anyhow::Context;

/// The two ends of a pseudo-terminal.
pub struct Pty {
    master: OwnedFd,
    slave: Option<OwnedFd>,
}

impl Pty {
    pub fn open() -> anyhow::Result<Pty> {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two new descriptors into the out-parameters; the name, termios
        // and window-size arguments may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error()).context("openpty");
        }
        // SAFETY: both descriptors were just created by openpty and are owned by nobody else.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
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
