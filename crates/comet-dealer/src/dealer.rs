//! The dealer's state machine and the in-process correlation source.

use crate::kinds::generate_by_tag;
use crate::kinds::sparse::{PlainAttn, PlainFfn, SparseStore};
use crate::weights::{mask_weight, FixedWeight, WeightId, WeightMask};
use crate::{encode_request, CorrelationKind, DealerError, GenContext};
use comet_core::{PartyId, Prg};
use comet_net::{frame, CostMeter};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// How a server obtains its halves of correlated randomness.
pub trait CorrelationSource: Send {
    /// Sends an encoded request (see [`encode_request`]) and returns this server's half.
    fn fetch_raw(&mut self, request: &[u8]) -> Result<Vec<u8>, DealerError>;
    /// Meter of the offline traffic (requests and halves).
    fn meter(&self) -> &CostMeter;
}

/// Typed access to any [`CorrelationSource`].
pub trait CorrelationSourceExt: CorrelationSource {
    /// Fetches and decodes one correlation of kind `K`.
    fn fetch<K: CorrelationKind>(
        &mut self,
        party: PartyId,
        params: &K::Params,
    ) -> Result<K, DealerError> {
        let bytes = self.fetch_raw(&encode_request::<K>(params))?;
        K::decode(party, params, &bytes)
    }
}

impl<S: CorrelationSource + ?Sized> CorrelationSourceExt for S {}

impl<S: CorrelationSource + ?Sized> CorrelationSource for Box<S> {
    fn fetch_raw(&mut self, request: &[u8]) -> Result<Vec<u8>, DealerError> {
        (**self).fetch_raw(request)
    }
    fn meter(&self) -> &CostMeter {
        (**self).meter()
    }
}

/// Generator state: PRG, registered weight masks and, per server, the halves generated on
/// the other server's request that it has not fetched yet.
///
/// Both servers issue the same requests in the same order; whichever asks first triggers the
/// generation, the other finds its half queued. A request that differs from the queued one
/// means the servers diverged, which is reported as [`DealerError::OutOfSync`].
pub struct Dealer {
    prg: Prg,
    weights: HashMap<WeightId, WeightMask>,
    queued: [VecDeque<(Vec<u8>, Vec<u8>)>; 2],
    next_weight: u32,
    sparse: SparseStore,
}

impl std::fmt::Debug for Dealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dealer")
            .field("weights", &self.weights.len())
            .finish_non_exhaustive()
    }
}

impl Dealer {
    /// A dealer seeded from the operating system.
    pub fn new() -> Self {
        Self::with_prg(Prg::from_entropy())
    }

    /// A dealer with a given PRG (deterministic tests).
    pub fn with_prg(prg: Prg) -> Self {
        Self {
            prg,
            weights: HashMap::new(),
            queued: [VecDeque::new(), VecDeque::new()],
            next_weight: 0,
            sparse: SparseStore::default(),
        }
    }

    /// Registers plaintext weight `w` (`k × n`, input-major) under a fresh id; returns the two
    /// servers' views (`F = W − B` and their shares of `B`).
    pub fn register_weight(&mut self, w: &[u64], k: usize, n: usize) -> [FixedWeight; 2] {
        let id = WeightId(self.next_weight);
        self.next_weight += 1;
        let (mask, views) = mask_weight(id, w, k, n, &mut self.prg);
        self.weights.insert(id, mask);
        views
    }

    /// Registers an existing mask (for example one loaded from a model-sharing directory).
    pub fn insert_weight_mask(&mut self, id: WeightId, mask: WeightMask) {
        self.next_weight = self.next_weight.max(id.0 + 1);
        self.weights.insert(id, mask);
    }

    /// Keeps layer `layer`'s plaintext FFN so that sparse sessions can get it permuted.
    pub fn insert_plain_ffn(&mut self, layer: u32, ffn: PlainFfn) {
        self.sparse.insert(layer, ffn);
    }

    /// Keeps layer `layer`'s plaintext attention so that head-sparse sessions can get it
    /// permuted.
    pub fn insert_plain_attn(&mut self, layer: u32, attn: PlainAttn) {
        self.sparse.insert_attn(layer, attn);
    }

    /// The secret head order of layer `layer` in the current session (tests map the servers'
    /// opened head bits back to heads with it).
    pub fn head_permutation(&self, layer: u32) -> Option<&[usize]> {
        self.sparse.head_permutation(layer)
    }

    /// The secret neuron permutation of layer `layer` in the current session (tests map the
    /// servers' opened positions back to neurons with it).
    pub fn ffn_permutation(&self, layer: u32) -> Option<&[usize]> {
        self.sparse.permutation(layer)
    }

    /// Whether a weight mask is registered under `id`.
    pub fn has_weight(&self, id: WeightId) -> bool {
        self.weights.contains_key(&id)
    }

    /// Answers one request of `party`: returns its half, generating the pair if needed.
    pub fn serve(&mut self, party: PartyId, request: &[u8]) -> Result<Vec<u8>, DealerError> {
        let me = party.index();
        if let Some((queued_request, half)) = self.queued[me].pop_front() {
            if queued_request != request {
                return Err(DealerError::OutOfSync {
                    party: format!("{party:?}"),
                    asked: describe(request),
                    expected: describe(&queued_request),
                });
            }
            return Ok(half);
        }
        let (&tag, params) = request
            .split_first()
            .ok_or_else(|| DealerError::Malformed("empty request".into()))?;
        let mut ctx = GenContext {
            prg: &mut self.prg,
            weights: &self.weights,
            sparse: &mut self.sparse,
        };
        let generated = generate_by_tag(tag, params, &mut ctx);
        for id in self.sparse.retired.drain(..) {
            self.weights.remove(&id);
        }
        self.weights.extend(self.sparse.pending.drain(..));
        let [h0, h1] = generated?;
        let (mine, other) = if me == 0 { (h0, h1) } else { (h1, h0) };
        self.queued[1 - me].push_back((request.to_vec(), other));
        Ok(mine)
    }
}

impl Default for Dealer {
    fn default() -> Self {
        Self::new()
    }
}

fn describe(request: &[u8]) -> String {
    match request.first() {
        Some(tag) => format!("kind {tag} ({} parameter bytes)", request.len() - 1),
        None => "an empty request".into(),
    }
}

/// A dealer shared by the two servers of one process (the default deployment).
#[derive(Clone, Debug)]
pub struct InProcessDealer {
    inner: Arc<Mutex<Dealer>>,
}

impl InProcessDealer {
    /// Wraps a dealer for in-process use.
    pub fn new(dealer: Dealer) -> Self {
        Self {
            inner: Arc::new(Mutex::new(dealer)),
        }
    }

    /// Runs `f` on the dealer (for registering weights).
    pub fn with<R>(&self, f: impl FnOnce(&mut Dealer) -> R) -> R {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The shared dealer, for serving remote servers with [`crate::serve_party`].
    pub fn shared(&self) -> Arc<Mutex<Dealer>> {
        self.inner.clone()
    }

    /// The correlation source of server `party`.
    pub fn source(&self, party: PartyId) -> LocalSource {
        LocalSource {
            dealer: self.inner.clone(),
            party,
            meter: CostMeter::new(),
        }
    }
}

/// One server's in-process link to an [`InProcessDealer`]; counts the bytes a remote link
/// would carry.
#[derive(Debug)]
pub struct LocalSource {
    dealer: Arc<Mutex<Dealer>>,
    party: PartyId,
    meter: CostMeter,
}

impl CorrelationSource for LocalSource {
    fn fetch_raw(&mut self, request: &[u8]) -> Result<Vec<u8>, DealerError> {
        self.meter.record_send(frame::HEADER_LEN + request.len());
        self.meter.record_flush();
        let half = self
            .dealer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .serve(self.party, request)?;
        // The remote reply carries one status byte before the half.
        self.meter.record_recv(frame::HEADER_LEN + 1 + half.len());
        Ok(half)
    }

    fn meter(&self) -> &CostMeter {
        &self.meter
    }
}
