//! The C allocator's settings for a long-running server.
//!
//! glibc's malloc gives threads that contend for it arenas of their own, up to eight per core.
//! The coordinator runs SQLite and other blocking work on tokio's blocking pool, so a burst of
//! registrations spreads allocations over many arenas, each keeping its freed memory resident.
//! At 1,000 agents that was ~6 MiB of the coordinator's memory: 1.59–1.61× the bare transport's
//! per agent, against 1.45–1.50× with two arenas; at 10,000, 1.43–1.45× against 1.29–1.34×
//! (BENCHMARKS.md, *Memory and the allocator*). Two arenas suit a process whose work is two
//! runtime threads and short blocking calls: idle CPU at 10,000 agents did not rise (11.0 %
//! with, 13.2 % without, back to back). Another allocator was tried and not kept (same
//! section).

/// Caps glibc's malloc arenas at two. Call before the runtime starts its threads. Returns
/// whether the setting took (always false off glibc, where it does not apply).
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
