//! comet-protocols: the two-party protocols of comet, each checked against an ideal
//! functionality (a plaintext function of the reconstructed inputs).
//!
//! A server runs a protocol through its [`Party`]: its identity, its channel to the other
//! server, its source of correlated randomness, and the fixed-point format. Values are
//! additive shares over Z_2^64 held as plain `Vec<u64>`/`&[u64]` (this server's share).
//!
//! * [`arith`]: opening, local linear operations, element-wise products, products with fixed
//!   weight masks.
//! * [`compare`]: DReLU, sign, comparison, select, ReLU and row maxima from FSS gates.
//! * [`lut`]: secret-index lookup tables (1-bit DPF, SIGMA style).
//! * [`sparse`]: the self-gate of the sparse FFN (which neurons to compute).
//! * [`testing`]: runs both servers in one process for tests and benchmarks.

pub mod arith;
pub mod compare;
pub mod error;
pub mod lut;
pub mod nonlinear;
pub mod party;
pub mod shuffle;
pub mod sparse;
pub mod testing;
pub mod trunc;

pub use error::ProtocolError;
pub use party::Party;
