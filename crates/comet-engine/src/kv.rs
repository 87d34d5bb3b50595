//! The secret-shared KV cache with fixed row masks (DESIGN.md §4).
//!
//! Per session and layer the dealer draws fresh masks `B_K`, `B_V` (`rows × kv_dim`) and
//! registers them under reserved weight ids; each server expands its share of them from a
//! seed. When a key/value row is written it is opened once as `F = K − B` (a one-time pad,
//! since each row of `B` masks exactly one row). Later products with the cache open only the
//! query side (see `comet_dealer::kinds::attention`).

use crate::error::{EngineError, Result};
use comet_core::{Prg, Seed};
use comet_dealer::kinds::attention::fresh_cache_mask;
use comet_dealer::kinds::expand;
use comet_dealer::{Dealer, WeightId};
use comet_model::LlamaConfig;
use comet_net::codec::{Reader, Writer};

/// First weight id reserved for KV cache masks; layer `l` uses `base + 2l` (keys) and
/// `base + 2l + 1` (values). Model weights are numbered from 0 and never reach it.
pub const KV_MASK_ID_BASE: u32 = 1 << 30;

/// The weight id of layer `layer`'s key (`value = false`) or value (`value = true`) mask.
pub fn kv_mask_id(layer: usize, value: bool) -> WeightId {
    WeightId(KV_MASK_ID_BASE + 2 * layer as u32 + value as u32)
}

/// What one server receives from the dealer when a session starts: the cache capacity and,
/// per layer, the seeds of its shares of the key and value masks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvSessionSeeds {
    /// Rows (positions) the cache can hold in this session.
    pub rows: usize,
    /// Per layer: seeds of this server's shares of `B_K` and `B_V`.
    pub layers: Vec<[Seed; 2]>,
}

impl KvSessionSeeds {
    /// Serialises the seeds (dealer → server message at session start).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u32(self.rows as u32).u32(self.layers.len() as u32);
        for [k, v] in &self.layers {
            w.bytes(k).bytes(v);
        }
        w.finish()
    }

    /// Parses [`KvSessionSeeds::encode`]'s output.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |e: comet_net::NetError| EngineError::Session(format!("KV session seeds: {e}"));
        let mut r = Reader::new(bytes);
        let rows = r.u32().map_err(bad)? as usize;
        let n = r.u32().map_err(bad)? as usize;
        if n > 4096 {
            return Err(EngineError::Session(format!(
                "KV session seeds for {n} layers"
            )));
        }
        let mut layers = Vec::with_capacity(n);
        for _ in 0..n {
            let k = seed_from(r.bytes().map_err(bad)?)?;
            let v = seed_from(r.bytes().map_err(bad)?)?;
            layers.push([k, v]);
        }
        r.finish().map_err(bad)?;
        Ok(Self { rows, layers })
    }
}

fn seed_from(bytes: &[u8]) -> Result<Seed> {
    bytes
        .try_into()
        .map_err(|_| EngineError::Session(format!("a seed of {} bytes", bytes.len())))
}

/// Dealer side of a session start: draws fresh cache masks for every layer, registers them
/// with `dealer` (replacing any of an earlier session) and returns each server's seeds.
pub fn start_kv_session(
    dealer: &mut Dealer,
    config: &LlamaConfig,
    rows: usize,
    prg: &mut Prg,
) -> [KvSessionSeeds; 2] {
    let mut seeds = [
        KvSessionSeeds {
            rows,
            layers: Vec::with_capacity(config.n_layers),
        },
        KvSessionSeeds {
            rows,
            layers: Vec::with_capacity(config.n_layers),
        },
    ];
    for l in 0..config.n_layers {
        let mut pair = [[[0u8; 16]; 2]; 2];
        for (slot, value) in [false, true].into_iter().enumerate() {
            let (mask, [s0, s1]) = fresh_cache_mask(rows, config.kv_dim(), prg);
            dealer.insert_weight_mask(kv_mask_id(l, value), mask);
            pair[0][slot] = s0;
            pair[1][slot] = s1;
        }
        seeds[0].layers.push(pair[0]);
        seeds[1].layers.push(pair[1]);
    }
    seeds
}

/// One layer of one server's cache.
#[derive(Clone, Debug)]
pub struct LayerKv {
    /// Opened key rows `F_K = K − B_K` (`len × kv_dim`), public to both servers.
    pub keys_open: Vec<u64>,
    /// Opened value rows `F_V = V − B_V`.
    pub values_open: Vec<u64>,
    /// This server's share of `B_K` for all `rows` positions.
    pub key_mask: Vec<u64>,
    /// This server's share of `B_V`.
    pub value_mask: Vec<u64>,
}

/// One server's KV cache for a session.
#[derive(Clone, Debug)]
pub struct SecureKvCache {
    /// Capacity in positions.
    pub rows: usize,
    /// Width of a cached row (`n_kv_heads · head_dim`).
    pub width: usize,
    /// Positions written so far.
    pub len: usize,
    /// Per layer.
    pub layers: Vec<LayerKv>,
}

impl SecureKvCache {
    /// Expands this server's mask shares from its session seeds.
    pub fn new(config: &LlamaConfig, seeds: &KvSessionSeeds) -> Result<Self> {
        if seeds.layers.len() != config.n_layers {
            return Err(EngineError::Session(format!(
                "KV seeds for {} layers, the model has {}",
                seeds.layers.len(),
                config.n_layers
            )));
        }
        let width = config.kv_dim();
        let layers = seeds
            .layers
            .iter()
            .map(|[k, v]| LayerKv {
                keys_open: Vec::with_capacity(seeds.rows * width),
                values_open: Vec::with_capacity(seeds.rows * width),
                key_mask: expand(k, seeds.rows * width),
                value_mask: expand(v, seeds.rows * width),
            })
            .collect();
        Ok(Self {
            rows: seeds.rows,
            width,
            len: 0,
            layers,
        })
    }

    /// Fails unless `m` more positions fit.
    pub fn check_room(&self, m: usize) -> Result<()> {
        if self.len + m > self.rows {
            return Err(EngineError::InvalidRequest(format!(
                "{} cached + {m} new tokens exceed the session's context of {} tokens",
                self.len, self.rows
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_seeds_round_trip_and_reject_garbage() {
        let seeds = KvSessionSeeds {
            rows: 7,
            layers: vec![[[1; 16], [2; 16]], [[3; 16], [4; 16]]],
        };
        assert_eq!(KvSessionSeeds::decode(&seeds.encode()).unwrap(), seeds);
        let bytes = seeds.encode();
        assert!(KvSessionSeeds::decode(&bytes[..bytes.len() - 3]).is_err());
        assert!(KvSessionSeeds::decode(&[]).is_err());
    }
}
