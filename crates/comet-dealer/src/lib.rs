//! comet-dealer
