//! Errors of the protocol layer.

use comet_dealer::DealerError;
use comet_net::NetError;

/// Why a protocol could not finish. The session ends with this error on both servers.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The link to the other server failed.
    #[error("link to the other server: {0}")]
    Net(#[from] NetError),
    /// Correlated randomness could not be obtained.
    #[error("correlated randomness: {0}")]
    Dealer(#[from] DealerError),
    /// Inputs of inconsistent or unsupported shape.
    #[error("shape error: {0}")]
    Shape(String),
    /// An input outside the documented range of a protocol.
    #[error("out of range: {0}")]
    Range(String),
}

/// Fails with [`ProtocolError::Shape`] unless `got == expected`.
pub fn check_len(what: &str, got: usize, expected: usize) -> Result<(), ProtocolError> {
    if got == expected {
        Ok(())
    } else {
        Err(ProtocolError::Shape(format!(
            "{what} has {got} elements, expected {expected}"
        )))
    }
}
