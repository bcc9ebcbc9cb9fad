//! The standard `process_*` metrics (the names every Prometheus client library uses), read
//! from `/proc/self` on Linux: resident memory, CPU time, open and maximum file descriptors,
//! start time. A coordinator with thousands of agents holds one descriptor per agent, so
//! `process_open_fds / process_max_fds` is the first thing to watch when it grows.
//!
//! On a system without `/proc` the families are left out rather than reported as zero.

use skoala_support::prometheus::{Kind, Writer};

/// What `/proc/self` says right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: f64,
    pub cpu_seconds: f64,
    pub open_fds: f64,
    pub max_fds: f64,
    pub start_time_seconds: f64,
}

/// Reads the stats; `None` where `/proc` is missing or unreadable.
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let max_fds = skoala_support::rlimit::open_files().map_or(0.0, |n| n as f64);
    // SAFETY: sysconf only reads process-wide settings.
    #[allow(unsafe_code, reason = "libc has the only sysconf")]
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK) as f64,
            libc::sysconf(libc::_SC_PAGESIZE) as f64,
        )
    };
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime is field 14, stime 15, starttime 22.
    let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
    let cpu_seconds = (field(14)? + field(15)?) / ticks;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())?;
    let start_time_seconds = boot + field(22)? / ticks;
    let resident_pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
    Some(ProcessStats {
        resident_bytes: resident_pages * page,
        cpu_seconds,
        open_fds,
        max_fds,
        start_time_seconds,
    })
}

pub fn render(w: &mut Writer) {
    let Some(s) = read() else { return };
    w.single(
        "process_resident_memory_bytes",
        Kind::Gauge,
        "Resident memory size in bytes.",
        s.resident_bytes,
    );
    w.single(
        "process_cpu_seconds_total",
        Kind::Counter,
        "Total user and system CPU time spent in seconds.",
        s.cpu_seconds,
    );
    w.single(
        "process_open_fds",
        Kind::Gauge,
        "Number of open file descriptors.",
        s.open_fds,
    );
    w.single(
        "process_max_fds",
        Kind::Gauge,
        "Maximum number of open file descriptors (the soft limit).",
        s.max_fds,
    );
    w.single(
        "process_start_time_seconds",
        Kind::Gauge,
        "Start time of the process since the Unix epoch in seconds.",
        s.start_time_seconds,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let s = read().expect("/proc is there on the machines we test on");
        assert!(s.resident_bytes > 1_000_000.0, "{s:?}");
        assert!(s.open_fds >= 3.0 && s.open_fds <= s.max_fds, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(
            s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86400.0,
            "{s:?}"
        );
        assert!(s.cpu_seconds >= 0.0);
    }
}
