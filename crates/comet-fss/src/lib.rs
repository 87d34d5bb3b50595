//! comet-fss
