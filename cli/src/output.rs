//! Output formats (`-o table|json|yaml`) and a minimal aligned-column table.

use serde::Serialize;
use skoala_support::names;

/// How to print a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for humans.
    Table,
    /// JSON, stable field names, for scripts (`jq`).
    Json,
    /// YAML, same fields as JSON.
    Yaml,
}

/// Prints `value` as JSON or YAML; `None` for table (the caller prints its own table).
pub fn structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<bool> {
    match format {
        Format::Table => Ok(false),
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(value)?);
            Ok(true)
        }
        Format::Yaml => {
            print!("{}", serde_yaml::to_string(value)?);
            Ok(true)
        }
    }
}

/// Prints rows under `header` with columns padded to the widest cell. Cells hold what agents
/// and peers chose (names, audit details, helm's messages): control characters are escaped
/// ([`names::printable`]), so none of it drives the operator's terminal.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(|c| names::printable(c).into_owned()).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i] - cell.chars().count();
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 3));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}

/// RFC 3339 for a Unix time in seconds; `None` for 0 (unknown).
pub fn time_s(unix: i64) -> Option<String> {
    if unix <= 0 {
        return None;
    }
    jiff::Timestamp::from_second(unix)
        .ok()
        .map(|t| t.to_string())
}

/// RFC 3339 for a Unix time in milliseconds; `None` for 0.
pub fn time_ms(unix_ms: i64) -> Option<String> {
    if unix_ms <= 0 {
        return None;
    }
    jiff::Timestamp::from_millisecond(unix_ms)
        .ok()
        .map(|t| t.to_string())
}

/// "12s ago" / "3m ago" for a Unix time in milliseconds, "-" for unknown.
pub fn age_ms(unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".into();
    }
    let now = jiff::Timestamp::now().as_millisecond();
    let secs = ((now - unix_ms).max(0)) / 1000;
    match secs {
        0..=119 => format!("{secs}s ago"),
        120..=7199 => format!("{}m ago", secs / 60),
        7200..=172_799 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86400),
    }
}

/// `-` for an empty cell.
pub fn dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}
