//! Errors of the secure engine.

use comet_dealer::DealerError;
use comet_model::ModelError;
use comet_net::NetError;
use comet_protocols::ProtocolError;

/// Why a secure generation could not run or finish. Every party that survives a fault ends
/// with one of these, never with partial output presented as an answer.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A two-party protocol failed (link to the other server, dealer, shapes, ranges).
    #[error("secure protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// A link (client ↔ server, server ↔ dealer) failed.
    #[error("link: {0}")]
    Net(#[from] NetError),
    /// The dealer refused or could not serve a request.
    #[error("dealer: {0}")]
    Dealer(#[from] DealerError),
    /// The plaintext model could not be loaded or is malformed.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// The user's request is invalid (empty prompt, too long for the context, bad options).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Model shares do not belong to the model (or role) they are used with.
    #[error("model shares do not match: {0}")]
    ShareMismatch(String),
    /// A message from another party does not follow the session protocol.
    #[error("session protocol violation: {0}")]
    Session(String),
    /// Reading or writing shares or reports failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Result of engine operations.
pub type Result<T> = std::result::Result<T, EngineError>;
