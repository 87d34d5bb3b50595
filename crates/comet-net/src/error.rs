//! Errors of the comet channels.

use std::time::Duration;

/// Why a channel operation failed. Each variant names the cause so that both parties can
/// report it and end the session cleanly.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The peer closed the connection (or its process ended).
    #[error("peer closed the connection{0}")]
    Closed(String),
    /// Nothing arrived from the peer within the configured timeout.
    #[error("timed out after {0:?} waiting for the peer")]
    Timeout(Duration),
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: peer sent version {got}, this build speaks {expected}")]
    Version { got: u8, expected: u8 },
    /// A frame or message could not be decoded.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A frame was larger than the configured maximum.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge { len: usize, max: usize },
    /// TLS setup or handshake failed (for example a certificate from another deployment).
    #[error("TLS error: {0}")]
    Tls(String),
    /// Could not connect to the peer.
    #[error("could not connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// A listener waited for a peer that never connected.
    #[error("no peer ({expected}) connected to {addr} within {waited:?}")]
    AcceptTimeout {
        addr: String,
        expected: String,
        waited: Duration,
    },
    /// Another I/O error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
