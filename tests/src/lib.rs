//! skoala-e2e
