//! comet-dealer: correlated randomness for the two servers.
//!
//! The dealer (the model owner's preprocessing service) generates, for every protocol step
//! that needs one, a pair of correlated values and gives each server its half. It never sees
//! an online message: a server's request names only a [`CorrelationKind`] and its public
//! parameters (shapes and bit widths), never data.
//!
//! * [`CorrelationKind`]: one kind of correlation (its public parameters, its generator,
//!   and how a server decodes its half). The kinds live in [`kinds`].
//! * [`Dealer`]: the generator state (PRG, registered weight masks, per-server queues).
//! * [`CorrelationSource`]: how a server obtains its halves — [`InProcessDealer`] in the same
//!   process, or [`RemoteSource`] over any [`comet_net::Channel`] (TLS in deployments).
//!   Both move the same bytes and count them on an offline meter.

pub mod dealer;
pub mod error;
pub mod kinds;
pub mod remote;
pub mod weights;

pub use dealer::{CorrelationSource, Dealer, InProcessDealer, LocalSource};
pub use error::DealerError;
pub use remote::{serve_party, RemoteSource};
pub use weights::{FixedWeight, WeightId};

use comet_core::{PartyId, Prg};
use comet_net::codec::{Reader, Writer};
use std::collections::HashMap;

/// What the dealer has at hand while generating one correlation.
pub struct GenContext<'a> {
    /// The dealer's cryptographic PRG.
    pub prg: &'a mut Prg,
    /// Fixed weight masks `B` of the registered weights (DESIGN.md §4).
    pub weights: &'a HashMap<WeightId, weights::WeightMask>,
    /// Plaintext FFN and attention weights and per-session permutations (sparse sessions,
    /// DESIGN.md §7).
    pub sparse: &'a mut kinds::sparse::SparseStore,
}

/// One kind of correlated randomness.
///
/// The dealer calls [`CorrelationKind::generate`] once per request and hands each server one
/// half; each server rebuilds its typed half with [`CorrelationKind::decode`]. `TAG` identifies
/// the kind on the wire and must be unique (see [`kinds::generate_by_tag`]).
pub trait CorrelationKind: Sized {
    /// Public parameters of one request (shapes, bit widths): all the dealer learns.
    type Params: Clone + PartialEq + std::fmt::Debug;
    /// Wire tag of this kind.
    const TAG: u8;
    /// Human-readable name for errors and reports.
    const NAME: &'static str;
    /// Serializes the public parameters.
    fn encode_params(params: &Self::Params, w: &mut Writer);
    /// Parses public parameters sent by a server.
    fn decode_params(r: &mut Reader) -> Result<Self::Params, DealerError>;
    /// Generates both halves, already serialized: `[P0's bytes, P1's bytes]`.
    fn generate(params: &Self::Params, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError>;
    /// Rebuilds a server's half from its bytes.
    fn decode(party: PartyId, params: &Self::Params, bytes: &[u8]) -> Result<Self, DealerError>;
}

/// Encodes a request: kind tag followed by the public parameters.
pub fn encode_request<K: CorrelationKind>(params: &K::Params) -> Vec<u8> {
    let mut w = Writer::new();
    w.u8(K::TAG);
    K::encode_params(params, &mut w);
    w.finish()
}
