//! comet-core: the arithmetic every other comet crate builds on.
//!
//! * [`ring`]: wrapping arithmetic on the ring Z_2^64 and on vectors of ring elements.
//! * [`fixed`]: fixed-point encoding of reals into the ring.
//! * [`prg`]: an AES-128-CTR pseudo-random generator, seedable or seeded from the OS.
//! * [`share`]: two-party additive secret sharing.
//! * [`matmul`]: ring matrix multiplication with run-time CPU dispatch.

pub mod fixed;
pub mod matmul;
pub mod prg;
pub mod ring;
pub mod share;

pub use fixed::FixedPoint;
pub use prg::{Prg, Seed};
pub use share::PartyId;
