//! Gated lookup table: shares of `g(x)·T[j(x)]` (plus optionally `ReLU(x)`) in two rounds.
//!
//! With the input mask `r` and `x̂ = x + r` opened (round 1), the table index is
//! `j = ((x̂ >> s) − (r >> s)) mod 2^m = ⌊(x + (r mod 2^s)) / 2^s⌋ mod 2^m`: the input
//! rounded to `2^s` ulps with a *random* carry, so `x ∈ [j·2^s − (2^s − 1), j·2^s + 2^s − 1]`.
//! Tables built by [`window_table`] store, for every `j`, the midrange of the ideal function
//! over exactly that window of ring values, so the lookup error is half the function's
//! oscillation over `2^(s+1) − 1` ulps (plus half an output ulp), whatever the carry.
//!
//! The gate `g = Σ_t w_t·1{x ≥ c_t}` restricts the table to its range (exact zero outside),
//! and the DPF sign is removed with the masked opening of `v + ρ` (round 2); see
//! `comet_dealer::kinds::nonlinear` for the algebra.

use crate::{Party, ProtocolError};
use comet_core::{ring, PartyId};
use comet_dealer::kinds::nonlinear::{GatedLutKeys, GatedLutParams, MAX_LUT_BITS};
use comet_fss::{dcf_eval_vec, dpf_eval_all, relu_eval, DcfKey, DpfKey};
use rayon::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A public table and how it is indexed and gated.
#[derive(Clone, Debug)]
pub struct GatedTable {
    /// Index shift `s` (ulps per table step are `2^s`).
    pub index_shift: u32,
    /// Index width `m`; `table.len() == 2^m`, entry `j mod 2^m` for signed `j`.
    pub index_bits: u32,
    /// Gate terms `(c_t, w_t)`: ring thresholds and ring weights.
    pub gate: Vec<(u64, u64)>,
    /// Table entries (ring values at the output scale).
    pub table: Arc<Vec<u64>>,
    /// Signed width of the comparisons and of the ReLU sign test.
    pub cmp_bits: u32,
}

/// This server's shares from [`gated_lookup`].
#[derive(Debug)]
pub struct GatedOutput {
    /// Shares of `g(x)·T[j(x)]`.
    pub gated: Vec<u64>,
    /// Shares of `ReLU(x)` (only when requested).
    pub relu: Option<Vec<u64>>,
}

/// Party `party`'s `v_b = (−1)^b Σ_i T[(x̂' − i) mod 2^m]·t_b(i)` for a masked index `x̂'`,
/// with `reversed[k] = T[−k mod 2^m]` so that `T[x̂' − i] = reversed[(i − x̂') mod 2^m]` runs
/// over contiguous memory. Branch-free in the DPF bits (each term is masked, not skipped).
pub(crate) fn table_sum(party: PartyId, key: &DpfKey, index: u64, reversed: &[u64]) -> u64 {
    let bits = dpf_eval_all(party, key);
    let size = reversed.len();
    let mask = size - 1;
    let x = index as usize & mask;
    let mut v = 0u64;
    for (w, &word) in bits.iter().enumerate() {
        let base = w * 64;
        if base >= size {
            break;
        }
        let count = (size - base).min(64);
        let start = base.wrapping_sub(x) & mask;
        let first = count.min(size - start);
        let mut acc = 0u64;
        for (b, t) in reversed[start..start + first].iter().enumerate() {
            acc = acc.wrapping_add(t & ((word >> b) & 1).wrapping_neg());
        }
        for (b, t) in reversed[..count - first].iter().enumerate() {
            acc = acc.wrapping_add(t & ((word >> (b + first)) & 1).wrapping_neg());
        }
        v = v.wrapping_add(acc);
    }
    if party == PartyId::P1 {
        v.wrapping_neg()
    } else {
        v
    }
}

/// Shares of `1{x ≥ c}·V` for a dealer vector `V` from the DReLU identity at `x̂ − c`
/// (`shifted`): `p·V + (1 − 2p)·(q·V + DCF)` with the DCF payload `(1 − 2q)·V`, `q = msb(r)`.
pub(crate) fn drelu_times(
    party: PartyId,
    dcf: &DcfKey<2>,
    v: [u64; 2],
    qv: [u64; 2],
    shifted: u64,
    bits: u32,
) -> [u64; 2] {
    let y = shifted & ring::mask_bits(bits);
    let p = 1 ^ (y >> (bits - 1));
    let low = y & ring::mask_bits(bits - 1);
    let c = dcf_eval_vec(party, dcf, low);
    let flip = 1u64.wrapping_sub(2 * p);
    [0, 1].map(|k| {
        p.wrapping_mul(v[k])
            .wrapping_add(flip.wrapping_mul(qv[k].wrapping_add(c[k])))
    })
}

/// Ideal functionality: shares of `g(x)·T[j(x)]` and, if `with_relu`, of `ReLU(x)`, for
/// signed `x` with `|x − c_t| < 2^(cmp_bits − 1)` for every threshold. Two rounds, 16 bytes
/// per element each way.
pub fn gated_lookup(
    p: &mut Party,
    x: &[u64],
    spec: &GatedTable,
    with_relu: bool,
) -> Result<GatedOutput, ProtocolError> {
    if spec.table.len() != 1usize << spec.index_bits || spec.index_bits > MAX_LUT_BITS {
        return Err(ProtocolError::Shape(format!(
            "gated table has {} entries for a {}-bit index",
            spec.table.len(),
            spec.index_bits
        )));
    }
    if x.is_empty() {
        return Ok(GatedOutput {
            gated: Vec::new(),
            relu: with_relu.then(Vec::new),
        });
    }
    let keys: GatedLutKeys = p.correlation(&GatedLutParams {
        n: x.len(),
        cmp_bits: spec.cmp_bits,
        index_shift: spec.index_shift,
        index_bits: spec.index_bits,
        with_relu,
    })?;
    let masked = ring::add(x, &keys.r);
    let theirs = p.exchange(&masked, 64)?;
    let x_hat = ring::add(&masked, &theirs);
    let party = p.id;
    let index_mask = ring::mask_bits(spec.index_bits);
    let reversed = reverse_table(&spec.table);
    let local: Vec<(u64, [u64; 2], u64)> = (0..x.len())
        .into_par_iter()
        .map(|i| {
            let v = table_sum(
                party,
                &keys.dpf[i],
                (x_hat[i] >> spec.index_shift) & index_mask,
                &reversed,
            );
            let mut g = [0u64; 2];
            for &(c, w) in &spec.gate {
                let t = drelu_times(
                    party,
                    &keys.cmp[i],
                    keys.v[i],
                    keys.qv[i],
                    x_hat[i].wrapping_sub(c),
                    spec.cmp_bits,
                );
                g[0] = g[0].wrapping_add(w.wrapping_mul(t[0]));
                g[1] = g[1].wrapping_add(w.wrapping_mul(t[1]));
            }
            let relu = keys
                .relu
                .as_ref()
                .map_or(0, |k| relu_eval(party, &k[i], x_hat[i]).1);
            (v.wrapping_add(keys.rho[i]), g, relu)
        })
        .collect();
    let v_masked: Vec<u64> = local.iter().map(|t| t.0).collect();
    let theirs = p.exchange(&v_masked, 64)?;
    let gated = local
        .iter()
        .zip(&theirs)
        .map(|((mine, g, _), other)| {
            g[0].wrapping_mul(mine.wrapping_add(*other))
                .wrapping_sub(g[1])
        })
        .collect();
    let relu = with_relu.then(|| local.iter().map(|t| t.2).collect());
    Ok(GatedOutput { gated, relu })
}

/// `reversed[k] = table[−k mod len]`, the layout [`table_sum`] reads contiguously.
pub(crate) fn reverse_table(table: &[u64]) -> Vec<u64> {
    let size = table.len();
    (0..size)
        .map(|k| table[size.wrapping_sub(k) & (size - 1)])
        .collect()
}

/// Most ring values of one window that [`window_table`] evaluates exhaustively.
const MAX_WINDOW_POINTS: usize = 1 << 13;

/// Points sampled in a wider window.
const WINDOW_SAMPLES: usize = 1 << 10;

/// Builds the table for `f` on inputs at `in_frac` fractional bits with index shift `s` and
/// `m` index bits: entry `j mod 2^m` (signed `j`) is the midrange of `f` over the ring values
/// `j·2^s − (2^s − 1) ..= j·2^s + 2^s − 1` (every one of them for windows of at most 2^13
/// values, ~2^10 evenly spaced ones with both ends beyond), rounded at `out_frac` bits. Cached per
/// `(name, in_frac, s, m, out_frac)`.
pub fn window_table(
    name: &'static str,
    f: impl Fn(f64) -> f64 + Sync,
    in_frac: u32,
    shift: u32,
    index_bits: u32,
    out_frac: u32,
) -> Arc<Vec<u64>> {
    type Key = (&'static str, u32, u32, u32, u32);
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Vec<u64>>>>> = OnceLock::new();
    let key = (name, in_frac, shift, index_bits, out_frac);
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(t) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return t.clone();
    }
    let size = 1usize << index_bits;
    let half = (size / 2) as i64;
    let step = 1i64 << shift;
    let scale = (in_frac as f64).exp2();
    // Windows wider than MAX_WINDOW_POINTS ring values (inputs at 2f) are sampled at
    // WINDOW_SAMPLES points, both ends included: the midrange then misses the true extremes by
    // at most max|f'|·stride/2^in_frac (2^-17·max|f'| for 2^17-value windows at in_frac = 24).
    let points = (2 * step - 1) as usize;
    let stride = if points > MAX_WINDOW_POINTS {
        points.div_ceil(WINDOW_SAMPLES)
    } else {
        1
    };
    let mut table = vec![0u64; size];
    let entries: Vec<(usize, u64)> = (-half..half)
        .into_par_iter()
        .map(|j| {
            let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
            let (first, last) = (j * step - (step - 1), j * step + step - 1);
            let points = (first..=last).step_by(stride).chain(std::iter::once(last));
            for u in points {
                let y = f(u as f64 / scale);
                lo = lo.min(y);
                hi = hi.max(y);
            }
            (
                (j & (size as i64 - 1)) as usize,
                super::encode_at((lo + hi) / 2.0, out_frac),
            )
        })
        .collect();
    for (idx, v) in entries {
        table[idx] = v;
    }
    let table = Arc::new(table);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, table.clone());
    table
}
