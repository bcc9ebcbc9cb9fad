//! The C allocator's settings for a long-running server.
//!
//! glibc's malloc gives threads that contend for it arenas of their own, up to eight per core.
//! The coordinator runs SQLite and other blocking work on tokio's blocking pool, so a burst of
//! registrations spreads allocations over many arenas, each keeping its freed memory resident.
//! Two arenas suit a process whose work is two runtime threads and short blocking calls: the
//! memory per agent falls, and idle CPU does not rise. The figures, and another allocator that
//! was tried and not kept, are in BENCHMARKS.md, *Memory and the allocator*.

/// Caps glibc's malloc arenas at two. Call before the runtime starts its threads. Returns
/// whether the setting took (always false off glibc, where it does not apply).
#[allow(unsafe_code, reason = "libc has the only mallopt")]
pub fn limit_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; M_ARENA_MAX takes any positive int.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
