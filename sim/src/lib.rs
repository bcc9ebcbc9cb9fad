//! skoala-sim
