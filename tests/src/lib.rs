//! Testkit for the cross-process end-to-end tests in `tests/tests/e2e/` (one test binary; its
//! `main.rs` says why and what the tests may not do to the process they share).
//!
//! End-to-end tests run the real binaries (ours, `helm`, `kubectl`) as separate processes, so
//! this crate holds what they share: where the tools are ([`tools`]), how to get a fresh build
//! of our own binaries ([`tools::our_bin`]), and how to wait on a condition with a deadline
//! ([`wait`]) instead of sleeping.

pub mod charts;
pub mod connect_proxy;
pub mod fleet;
pub mod kstore;
pub mod kubeapi;
pub mod layering;
pub mod netns;
pub mod pty;
pub mod real;
pub mod signal;
pub mod sim;
pub mod stand_in;
pub mod tools;
pub mod wait;
