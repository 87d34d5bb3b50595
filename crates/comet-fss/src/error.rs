//! Errors raised when decoding FSS keys from bytes.

use thiserror::Error;

/// Why a byte string is not a valid FSS key.
///
/// Decoding checks the structure of a key (kind tag, parameters, exact length, zero padding).
/// Seeds and correction words are pseudo-random, so a flipped bit inside them cannot be
/// detected here; the transport (TLS) is responsible for integrity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FssError {
    /// The bytes end before the key does.
    #[error("truncated {what}: needed {needed} more bytes, only {available} left")]
    Truncated {
        /// The key (or key part) being read.
        what: &'static str,
        /// Bytes still needed.
        needed: usize,
        /// Bytes actually left.
        available: usize,
    },
    /// The first byte does not name the expected key kind/version.
    #[error("wrong key tag for {what}: expected {expected:#04x}, found {found:#04x}")]
    WrongTag {
        /// The key kind being read.
        what: &'static str,
        /// The tag this kind uses.
        expected: u8,
        /// The tag found in the bytes.
        found: u8,
    },
    /// A header parameter is outside its allowed range.
    #[error("invalid {what}: {value} (allowed {allowed})")]
    InvalidParameter {
        /// Which parameter.
        what: &'static str,
        /// The value found.
        value: u64,
        /// The allowed range, in words.
        allowed: &'static str,
    },
    /// Bits that must be zero (byte padding, cleared seed bits, bits above a ring width) are set.
    #[error("corrupted {what}: bits that must be zero are set")]
    NonZeroPadding {
        /// The key part whose padding is wrong.
        what: &'static str,
    },
    /// Extra bytes follow a complete key.
    #[error("{count} unexpected trailing bytes after a {what}")]
    TrailingBytes {
        /// The key kind that was decoded.
        what: &'static str,
        /// Number of extra bytes.
        count: usize,
    },
}
