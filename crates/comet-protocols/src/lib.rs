//! comet-protocols
