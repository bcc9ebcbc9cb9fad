//! Wall-clock instants as records store them: integers since the Unix epoch, comparable across
//! processes and written as they are into SQLite rows, Kubernetes objects and audit lines.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    jiff::Timestamp::now().as_second()
}
