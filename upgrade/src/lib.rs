//! skoala-upgrade
