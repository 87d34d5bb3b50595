//! comet-net
