//! Small pieces every skoala binary shares, in a crate light enough for `skoalactl` and the
//! pure planning core to depend on (no gRPC, no Kubernetes client, no database).
//!
//! # Layout
//!
//! - [`admin_config`]: `admin.yaml`, what `skoalactl` needs to reach the coordinator;
//! - [`duration`]: the one parser for human durations (`90s`, `1h30m`, `2d`, `PT4H`) on every
//!   command line and in plan documents;
//! - [`fs`]: writing a file only its owner can read;
//! - [`names`]: what a cluster id, name and label may be (DNS-1123, Kubernetes label syntax),
//!   and how a string a peer chose is printed (control characters escaped);
//! - [`prometheus`]: the Prometheus text exposition format, for every `/metrics`;
//! - `rlimit` (feature `rlimit`): raising the open-files limit of a process holding many
//!   connections;
//! - `shutdown` (feature `shutdown`): waiting for SIGTERM or SIGINT;
//! - [`time`]: now, as records store it (seconds or milliseconds since the Unix epoch).

pub mod admin_config;
pub mod duration;
pub mod fs;
pub mod names;
pub mod prometheus;
#[cfg(feature = "rlimit")]
pub mod rlimit;
#[cfg(feature = "shutdown")]
pub mod shutdown;
pub mod time;
