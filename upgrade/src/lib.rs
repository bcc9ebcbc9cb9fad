//! skoala-upgrade
pub mod inventory;
