//! Errors of the dealer and of correlation decoding.

use comet_net::NetError;

/// Why obtaining or decoding correlated randomness failed.
#[derive(Debug, thiserror::Error)]
pub enum DealerError {
    /// The link to the dealer failed.
    #[error("dealer link: {0}")]
    Net(#[from] NetError),
    /// A request or a correlation could not be decoded.
    #[error("malformed dealer message: {0}")]
    Malformed(String),
    /// The request names a correlation kind this dealer does not know.
    #[error("unknown correlation kind tag {0}")]
    UnknownKind(u8),
    /// The two servers asked for different correlations at the same position.
    #[error(
        "servers out of sync: {party} asked for {asked}, the other server had asked for {expected}"
    )]
    OutOfSync {
        party: String,
        asked: String,
        expected: String,
    },
    /// A request refers to a weight the dealer does not hold.
    #[error("unknown weight id {0}")]
    UnknownWeight(u32),
    /// Parameters are invalid (zero or inconsistent sizes, unsupported widths).
    #[error("invalid correlation parameters: {0}")]
    InvalidParams(String),
}

impl DealerError {
    /// Wraps a decoding failure of kind `kind`.
    pub fn malformed(kind: &str, err: impl std::fmt::Display) -> Self {
        DealerError::Malformed(format!("{kind}: {err}"))
    }
}
