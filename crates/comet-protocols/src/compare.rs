//! Comparisons, ReLU, select and row maxima from FSS gates (DESIGN.md §5, fss-notes §2).
//!
//! All inputs and outputs are additive shares over Z_2^64 (`Vec<u64>`, this server's share);
//! "signed `bits`-bit x" means −2^(bits−1) ≤ x < 2^(bits−1) read as a two's-complement i64.
//! Outside that range the results are wrong (never a panic): pass a width with a spare bit.
//!
//! | function | result | rounds | online bytes / element / party | key (dealer kind) |
//! |---|---|---|---|---|
//! | [`drelu`]`(p, x, bits)` | 1{x ≥ 0} | 1 | ⌈bits/8⌉ | DCF on bits−1, 64-bit payload ([`DreluKeys`]) |
//! | [`msb`]`(p, x, bits)` | 1{x < 0} | 1 | ⌈bits/8⌉ | same |
//! | [`sign`]`(p, x, bits)` | +1 if x ≥ 0 else −1 (sign(0) = +1) | 1 | ⌈bits/8⌉ | same |
//! | [`less_than`]`(p, x, y, bits)` | 1{x < y}, needs x − y signed `bits`-bit | 1 | ⌈bits/8⌉ | same |
//! | [`select`]`(p, b, x)` | b·x for a secret bit b | 1 | 8 + 1/8 | 3 words ([`SelectMasks`]) |
//! | [`relu`]`(p, x, bits)` | max(x, 0) | 1 | 8 | DCF on bits−1, 2-word payload ([`ReluKeys`]) |
//! | [`relu_with_drelu`] | (max(x, 0), 1{x ≥ 0}) | 1 | 8 | same |
//! | [`relu_compact`] / [`relu_compact_with_drelu`] | as above | 2 | 8 + 1/8 | 1-bit DPF on bits−1 + 3 words ([`CompactReluKeys`]) |
//! | [`drelu_compact`]`(p, x, bits)` | 1{x ≥ 0} | 2 | ⌈bits/8⌉ + 1/8 | same |
//! | [`max_rows`]`(p, x, rows, cols, bits)` | row maxima | ⌈log2 cols⌉ | 8 per pair per level | ReLU keys on bits+1 |
//! | [`max_rows_with`]`(…, ReluGate::CompactKey)` | row maxima | 2⌈log2 cols⌉ | 8.125 per pair per level | compact keys on bits+1 |
//!
//! For merging rounds with other openings, [`DreluBatch`] and [`ReluBatch`] split a gate into
//! `fetch` (dealer), `masked_share` (the message to open: x + r mod 2^bits, resp. all 64 bits
//! for ReLU) and `finish` (local FSS evaluation on the opened x̂).
//!
//! **How.** With x̂ = x + r mod 2^n opened, `msb(x) = msb(x̂) ⊕ msb(r) ⊕ 1{x̂' < r'}` where the
//! primes are the low n − 1 bits; the dealer knows q = msb(r) and puts (1 − 2q) into the DCF
//! payload, so `q ⊕ c = q + (1 − 2q)·c` and `DReLU = p ⊕ (q ⊕ c)`, p = 1 ⊕ msb(x̂) public, are
//! linear in the DCF output: one round (the opening), no wrap-around correction. ReLU adds a
//! second payload word (1 − 2q)·r with a 64-bit mask r, giving `DReLU·r` and thus
//! `ReLU = DReLU·x̂ − DReLU·r` after the same single opening (BCG+21 / LLAMA style).
//! Select opens x̂ = x + r and ĉ = b ⊕ ρ (the low bits of additive shares of a bit XOR to the
//! bit) and outputs `b·x = (ĉ + (1 − 2ĉ)ρ)·(x̂ − r)`, linear in dealer shares of r, ρ, ρ·r.

use crate::arith::open_bits;
use crate::error::check_len;
use crate::{Party, ProtocolError};
use comet_core::ring::mask_bits;
use comet_core::PartyId;
use comet_dealer::kinds::compare::{CompactReluKeys, DreluKeys, ReluKeys, SelectMasks, SignParams};
use comet_fss::{dcf_eval_batch, dcf_eval_vec, dpf_lt_batch};
use rayon::prelude::*;

/// Elements per rayon task in the local FSS evaluations.
const PAR_MIN: usize = 64;

fn check_sign_width(what: &str, bits: u32) -> Result<(), ProtocolError> {
    if !(2..=64).contains(&bits) {
        return Err(ProtocolError::Range(format!(
            "{what}: width {bits} is outside 2..=64 bits"
        )));
    }
    Ok(())
}

/// A batch of DReLU gates whose keys are fetched but whose input is not yet opened: lets a
/// caller put the masked input into its own merged opening.
#[derive(Debug)]
pub struct DreluBatch {
    keys: DreluKeys,
}

impl DreluBatch {
    /// Fetches keys for `n` signed `bits`-bit inputs (2 ≤ bits ≤ 64).
    pub fn fetch(p: &mut Party, n: usize, bits: u32) -> Result<Self, ProtocolError> {
        check_sign_width("DReLU", bits)?;
        let keys = if n == 0 {
            DreluKeys {
                bits,
                mask: Vec::new(),
                msb: Vec::new(),
                cmp: Vec::new(),
            }
        } else {
            p.correlation::<DreluKeys>(&SignParams { n, bits })?
        };
        Ok(Self { keys })
    }

    /// Number of gates in the batch.
    pub fn len(&self) -> usize {
        self.keys.mask.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.keys.mask.is_empty()
    }

    /// Width of the signed inputs; open the masked shares modulo 2^bits.
    pub fn bits(&self) -> u32 {
        self.keys.bits
    }

    /// This server's share of x̂ = x + r mod 2^bits, to be opened with `bits` bits.
    pub fn masked_share(&self, x: &[u64]) -> Result<Vec<u64>, ProtocolError> {
        check_len("DReLU input", x.len(), self.len())?;
        let m = mask_bits(self.keys.bits);
        Ok(x.iter()
            .zip(&self.keys.mask)
            .map(|(a, r)| a.wrapping_add(*r) & m)
            .collect())
    }

    /// Local evaluation on the opened x̂: this server's additive share of 1{x ≥ 0}.
    pub fn finish(&self, p: &Party, x_hat: &[u64]) -> Result<Vec<u64>, ProtocolError> {
        check_len("opened DReLU input", x_hat.len(), self.len())?;
        Ok(self.eval_shifted(p.id, x_hat, 0))
    }

    /// Like [`DreluBatch::finish`] for x − c with a public c (same key, evaluated at x̂ − c):
    /// shares of 1{x ≥ c}, correct while x − c is a signed `bits`-bit value.
    pub fn finish_at(&self, p: &Party, x_hat: &[u64], c: u64) -> Result<Vec<u64>, ProtocolError> {
        check_len("opened DReLU input", x_hat.len(), self.len())?;
        Ok(self.eval_shifted(p.id, x_hat, c))
    }

    fn eval_shifted(&self, party: PartyId, x_hat: &[u64], c: u64) -> Vec<u64> {
        let bits = self.keys.bits;
        let low_mask = mask_bits(bits - 1);
        let full_mask = mask_bits(bits);
        let shifted: Vec<u64> = x_hat
            .iter()
            .map(|v| v.wrapping_sub(c) & full_mask)
            .collect();
        let lows: Vec<u64> = shifted.iter().map(|v| v & low_mask).collect();
        // Lockstep (AES-pipelined) batch evaluation of the comparison DCFs.
        let cmp = dcf_eval_batch(party, &self.keys.cmp, &lows);
        let is_p0 = party == PartyId::P0;
        shifted
            .iter()
            .zip(cmp)
            .zip(&self.keys.msb)
            .map(|((xh, c), q)| {
                let p = 1 ^ (xh >> (bits - 1));
                let g = q.wrapping_add(c);
                let public = if is_p0 { p } else { 0 };
                public.wrapping_add(1u64.wrapping_sub(2 * p).wrapping_mul(g))
            })
            .collect()
    }
}

/// Shares of 1{x ≥ 0} for signed `bits`-bit x (2 ≤ bits ≤ 64). One round: opens
/// x + r mod 2^bits (⌈bits/8⌉ bytes per element), then a local DCF evaluation on bits − 1 bits.
pub fn drelu(p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
    let batch = DreluBatch::fetch(p, x.len(), bits)?;
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let x_hat = open_bits(p, &batch.masked_share(x)?, bits)?;
    batch.finish(p, &x_hat)
}

/// Shares of the sign bit 1{x < 0} = 1 − DReLU(x); same cost as [`drelu`].
pub fn msb(p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
    let d = drelu(p, x, bits)?;
    Ok(one_minus(p, &d))
}

/// Shares of sign(x) ∈ {+1, −1} as ring elements (+1 for x ≥ 0, so sign(0) = +1; −1 is
/// 2^64 − 1): 2·DReLU(x) − 1. Same cost as [`drelu`].
pub fn sign(p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
    let d = drelu(p, x, bits)?;
    let is_p0 = p.is_p0();
    Ok(d.iter()
        .map(|v| v.wrapping_mul(2).wrapping_sub(is_p0 as u64))
        .collect())
}

/// Shares of 1{x < y} for secret x, y whose difference x − y is a signed `bits`-bit value
/// (for inputs of w signed bits pass bits = w + 1). One round, as [`drelu`] on x − y.
pub fn less_than(
    p: &mut Party,
    x: &[u64],
    y: &[u64],
    bits: u32,
) -> Result<Vec<u64>, ProtocolError> {
    check_len("less_than right operand", y.len(), x.len())?;
    let diff = comet_core::ring::sub(x, y);
    msb(p, &diff, bits)
}

/// Shares of 1 − d.
fn one_minus(p: &Party, d: &[u64]) -> Vec<u64> {
    let is_p0 = p.is_p0() as u64;
    d.iter().map(|v| is_p0.wrapping_sub(*v)).collect()
}

/// Shares of b·x for a secret bit b and secret ring elements x (element-wise). `bit` may hold
/// additive Z_2^64 shares of a bit (as [`drelu`] returns) or XOR shares in {0, 1}: only the
/// low bit of each share is used. One round: 64 + 1 bits per element each way.
pub fn select(p: &mut Party, bit: &[u64], x: &[u64]) -> Result<Vec<u64>, ProtocolError> {
    check_len("select operand", x.len(), bit.len())?;
    let n = x.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let masks: SelectMasks = p.correlation(&n)?;
    let x_masked: Vec<u64> = x
        .iter()
        .zip(&masks.x_mask)
        .map(|(a, r)| a.wrapping_add(*r))
        .collect();
    let b_masked: Vec<u64> = bit
        .iter()
        .zip(&masks.bit_mask)
        .map(|(b, r)| (b ^ r) & 1)
        .collect();
    let mine_b = b_masked.clone();
    let theirs = p.exchange_many(&[(&x_masked, 64), (&b_masked, 1)])?;
    let is_p0 = p.is_p0();
    Ok((0..n)
        .map(|i| {
            let x_hat = x_masked[i].wrapping_add(theirs[0][i]);
            let c = (mine_b[i] ^ theirs[1][i]) & 1;
            let flip = 1u64.wrapping_sub(2 * c);
            // b = c + (1 − 2c)ρ;  b·x = b·x̂ − (c·r + (1 − 2c)·ρr).
            let public = if is_p0 { c.wrapping_mul(x_hat) } else { 0 };
            public
                .wrapping_add(
                    flip.wrapping_mul(x_hat)
                        .wrapping_mul(masks.bit_mask_arith[i]),
                )
                .wrapping_sub(c.wrapping_mul(masks.x_mask[i]))
                .wrapping_sub(flip.wrapping_mul(masks.product[i]))
        })
        .collect())
}

/// A batch of one-round ReLU gates whose keys are fetched but whose input is not yet opened
/// (lets a caller merge the 64-bit opening of x + r with its own messages).
#[derive(Debug)]
pub struct ReluBatch {
    keys: ReluKeys,
}

impl ReluBatch {
    /// Fetches keys for `n` inputs whose sign is read from their low `bits` bits (2..=64).
    pub fn fetch(p: &mut Party, n: usize, bits: u32) -> Result<Self, ProtocolError> {
        check_sign_width("ReLU", bits)?;
        let keys = if n == 0 {
            ReluKeys {
                bits,
                mask: Vec::new(),
                msb: Vec::new(),
                msb_mask: Vec::new(),
                cmp: Vec::new(),
            }
        } else {
            p.correlation::<ReluKeys>(&SignParams { n, bits })?
        };
        Ok(Self { keys })
    }

    /// Number of gates in the batch.
    pub fn len(&self) -> usize {
        self.keys.mask.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.keys.mask.is_empty()
    }

    /// This server's share of x̂ = x + r (all 64 bits), to be opened with 64 bits.
    pub fn masked_share(&self, x: &[u64]) -> Result<Vec<u64>, ProtocolError> {
        check_len("ReLU input", x.len(), self.len())?;
        Ok(x.iter()
            .zip(&self.keys.mask)
            .map(|(a, r)| a.wrapping_add(*r))
            .collect())
    }

    /// Local evaluation on the opened x̂: this server's shares of (ReLU(x), DReLU(x)).
    pub fn finish(&self, p: &Party, x_hat: &[u64]) -> Result<(Vec<u64>, Vec<u64>), ProtocolError> {
        check_len("opened ReLU input", x_hat.len(), self.len())?;
        let keys = &self.keys;
        let bits = keys.bits;
        let party = p.id;
        let low_mask = mask_bits(bits - 1);
        let full_mask = mask_bits(bits);
        let pairs: Vec<(u64, u64)> = (0..x_hat.len())
            .into_par_iter()
            .with_min_len(PAR_MIN)
            .map(|i| {
                let xh = x_hat[i];
                let xn = xh & full_mask;
                let pb = 1 ^ (xn >> (bits - 1));
                let [c1, c2] = dcf_eval_vec(party, &keys.cmp[i], xn & low_mask);
                let flip = 1u64.wrapping_sub(2 * pb);
                let public = if party == PartyId::P0 { pb } else { 0 };
                let d = public.wrapping_add(flip.wrapping_mul(keys.msb[i].wrapping_add(c1)));
                let d_r = pb
                    .wrapping_mul(keys.mask[i])
                    .wrapping_add(flip.wrapping_mul(keys.msb_mask[i].wrapping_add(c2)));
                (d.wrapping_mul(xh).wrapping_sub(d_r), d)
            })
            .collect();
        Ok(pairs.into_iter().unzip())
    }
}

/// Shares of (ReLU(x), DReLU(x)) = (max(x, 0), 1{x ≥ 0}) for x ∈ Z_2^64 whose sign is read
/// from its low `bits` bits (x must be a signed `bits`-bit value). One round: opens the
/// 64-bit x + r (8 bytes per element), then one two-word DCF evaluation on bits − 1 bits.
pub fn relu_with_drelu(
    p: &mut Party,
    x: &[u64],
    bits: u32,
) -> Result<(Vec<u64>, Vec<u64>), ProtocolError> {
    let batch = ReluBatch::fetch(p, x.len(), bits)?;
    if batch.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let x_hat = open_bits(p, &batch.masked_share(x)?, 64)?;
    batch.finish(p, &x_hat)
}

/// Shares of max(x, 0) for signed `bits`-bit x; one round (see [`relu_with_drelu`]).
pub fn relu(p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
    Ok(relu_with_drelu(p, x, bits)?.0)
}

/// Shares of (ReLU(x), DReLU(x)) with SIGMA's smaller key: a 1-bit DPF comparison on
/// bits − 1 bits (≈16(bits − 6) bytes instead of a two-word DCF), at the price of a second
/// round. Round 1 opens the 64-bit x + r; round 2 opens the masked DReLU bit (1 bit).
pub fn relu_compact_with_drelu(
    p: &mut Party,
    x: &[u64],
    bits: u32,
) -> Result<(Vec<u64>, Vec<u64>), ProtocolError> {
    check_sign_width("compact ReLU", bits)?;
    let n = x.len();
    if n == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let keys: CompactReluKeys = p.correlation(&SignParams { n, bits })?;
    let masked: Vec<u64> = x
        .iter()
        .zip(&keys.mask)
        .map(|(a, r)| a.wrapping_add(*r))
        .collect();
    let x_hat = open_bits(p, &masked, 64)?;
    let e_open = open_masked_drelu_bit(p, &keys, &x_hat)?;
    let is_p0 = p.is_p0();
    let mut relu = Vec::with_capacity(n);
    let mut drelu = Vec::with_capacity(n);
    for i in 0..n {
        let e = e_open[i];
        let flip = 1u64.wrapping_sub(2 * e);
        let d = (if is_p0 { e } else { 0 }).wrapping_add(flip.wrapping_mul(keys.out_mask[i]));
        let d_r = e
            .wrapping_mul(keys.mask[i])
            .wrapping_add(flip.wrapping_mul(keys.out_mask_times_mask[i]));
        relu.push(d.wrapping_mul(x_hat[i]).wrapping_sub(d_r));
        drelu.push(d);
    }
    Ok((relu, drelu))
}

/// Shares of 1{x ≥ 0} for signed `bits`-bit x with the compact key of
/// [`relu_compact_with_drelu`] (1-bit DPF on bits − 1 bits, about half the DCF key of
/// [`drelu`]): two rounds, ⌈bits/8⌉ bytes then 1 bit per element. The key's ρ·r share goes
/// unused.
pub fn drelu_compact(p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
    check_sign_width("compact DReLU", bits)?;
    let n = x.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let keys: CompactReluKeys = p.correlation(&SignParams { n, bits })?;
    let masked: Vec<u64> = x
        .iter()
        .zip(&keys.mask)
        .map(|(a, r)| a.wrapping_add(*r))
        .collect();
    // x mod 2^bits is masked by r mod 2^bits, which is uniform: only `bits` bits are opened.
    let x_hat = open_bits(p, &masked, bits)?;
    let e = open_masked_drelu_bit(p, &keys, &x_hat)?;
    let is_p0 = p.is_p0();
    Ok(e.iter()
        .zip(&keys.out_mask)
        .map(|(&e, rho)| {
            (if is_p0 { e } else { 0 }).wrapping_add(1u64.wrapping_sub(2 * e).wrapping_mul(*rho))
        })
        .collect())
}

/// Evaluates the compact keys' DPF comparison on the opened x̂ (only its low `bits` bits are
/// read) and opens e = DReLU(x) ⊕ ρ (1 bit per element, one round).
fn open_masked_drelu_bit(
    p: &mut Party,
    keys: &CompactReluKeys,
    x_hat: &[u64],
) -> Result<Vec<u64>, ProtocolError> {
    let bits = keys.bits;
    let is_p0 = p.is_p0();
    let full_mask = mask_bits(bits);
    let lows: Vec<u64> = x_hat.iter().map(|v| v & mask_bits(bits - 1)).collect();
    let lt = dpf_lt_batch(p.id, &keys.cmp, &lows);
    // XOR share of e = DReLU(x) ⊕ ρ = p ⊕ (q ⊕ ρ) ⊕ 1{x̂' < r'}, p = 1 ⊕ msb(x̂).
    let e_mine: Vec<u64> = (0..x_hat.len())
        .map(|i| {
            let pb = 1 ^ ((x_hat[i] & full_mask) >> (bits - 1));
            (if is_p0 { pb } else { 0 }) ^ keys.masked_msb[i] ^ lt[i] as u64
        })
        .collect();
    let e_theirs = p.exchange(&e_mine, 1)?;
    Ok(e_mine
        .iter()
        .zip(&e_theirs)
        .map(|(a, b)| (a ^ b) & 1)
        .collect())
}

/// Shares of max(x, 0) with the compact two-round gate (see [`relu_compact_with_drelu`]).
pub fn relu_compact(p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
    Ok(relu_compact_with_drelu(p, x, bits)?.0)
}

/// Which ReLU gate a composite (such as [`max_rows_with`]) uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReluGate {
    /// [`relu`]: one round, two-word DCF key (≈32 bytes per compared bit).
    #[default]
    OneRound,
    /// [`relu_compact`]: two rounds, 1-bit DPF key (≈16 bytes per compared bit).
    CompactKey,
}

impl ReluGate {
    /// Runs the chosen ReLU gate.
    pub fn run(self, p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
        match self {
            ReluGate::OneRound => relu(p, x, bits),
            ReluGate::CompactKey => relu_compact(p, x, bits),
        }
    }
}

/// Shares of the maximum of each row of the row-major `rows × cols` matrix `x` of signed
/// `bits`-bit values (bits ≤ 63). A pairwise tree of ⌈log2 cols⌉ levels, odd elements carried
/// up; each level computes max(a, b) = b + ReLU(a − b) for every pair of every row in one
/// round (ReLU on bits + 1, since a − b needs a spare bit). Returns only the maxima.
pub fn max_rows(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    cols: usize,
    bits: u32,
) -> Result<Vec<u64>, ProtocolError> {
    max_rows_with(p, x, rows, cols, bits, ReluGate::OneRound)
}

/// [`max_rows`] with a chosen ReLU gate: [`ReluGate::CompactKey`] halves the key bytes and
/// doubles the rounds (2 per level).
pub fn max_rows_with(
    p: &mut Party,
    x: &[u64],
    rows: usize,
    cols: usize,
    bits: u32,
    gate: ReluGate,
) -> Result<Vec<u64>, ProtocolError> {
    if cols == 0 {
        return Err(ProtocolError::Shape(
            "max_rows needs at least one column".into(),
        ));
    }
    let total = rows
        .checked_mul(cols)
        .ok_or_else(|| ProtocolError::Shape(format!("max_rows: {rows} × {cols} overflows")))?;
    check_len("max_rows input", x.len(), total)?;
    if !(1..=63).contains(&bits) {
        return Err(ProtocolError::Range(format!(
            "max_rows: width {bits} is outside 1..=63 bits"
        )));
    }
    let mut cur = x.to_vec();
    let mut width = cols;
    while width > 1 {
        let pairs = width / 2;
        let next_width = width.div_ceil(2);
        let mut diff = Vec::with_capacity(rows * pairs);
        for row in cur.chunks_exact(width) {
            for k in 0..pairs {
                diff.push(row[2 * k].wrapping_sub(row[2 * k + 1]));
            }
        }
        let r = gate.run(p, &diff, bits + 1)?;
        let mut next = Vec::with_capacity(rows * next_width);
        for (row, rl) in cur.chunks_exact(width).zip(r.chunks_exact(pairs)) {
            for k in 0..pairs {
                next.push(row[2 * k + 1].wrapping_add(rl[k]));
            }
            if width % 2 == 1 {
                next.push(row[width - 1]);
            }
        }
        cur = next;
        width = next_width;
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{run_pair, share_for_test};
    use comet_core::share::reconstruct;
    use comet_core::Prg;
    use comet_dealer::{Dealer, InProcessDealer};
    use proptest::prelude::*;

    fn dealer(seed: u8) -> InProcessDealer {
        InProcessDealer::new(Dealer::with_prg(Prg::from_seed([seed; 16])))
    }

    /// Signed values of `bits` bits: random ones plus the edges of the range.
    fn signed_inputs(prg: &mut Prg, n: usize, bits: u32) -> Vec<i64> {
        let lo = if bits == 64 {
            i64::MIN
        } else {
            -(1i64 << (bits - 1))
        };
        let hi = if bits == 64 {
            i64::MAX
        } else {
            (1i64 << (bits - 1)) - 1
        };
        let mut v = vec![0, -1, 1, lo, hi, lo + 1, hi - 1];
        v.retain(|x| (lo..=hi).contains(x));
        while v.len() < n {
            let raw = prg.next_u64();
            v.push(comet_core::ring::sign_extend(raw & mask_bits(bits), bits) as i64);
        }
        v
    }

    fn as_ring(v: &[i64]) -> Vec<u64> {
        v.iter().map(|x| *x as u64).collect()
    }

    #[test]
    fn drelu_matches_plaintext_on_edges_and_random_values() {
        for bits in [2u32, 3, 8, 9, 13, 37, 63, 64] {
            let mut prg = Prg::from_seed([bits as u8; 16]);
            let x = signed_inputs(&mut prg, 150, bits);
            let xs = share_for_test(&as_ring(&x), &mut prg);
            let (r0, r1) = run_pair(&dealer(bits as u8), |p| {
                let i = p.id.index();
                let d = drelu(p, &xs[i], bits)?;
                let costs = p.online_meter().total();
                let compact = drelu_compact(p, &xs[i], bits)?;
                Ok((d, costs, compact))
            });
            let (d0, c0, k0) = r0.unwrap();
            let (d1, _, k1) = r1.unwrap();
            let got = reconstruct(&d0, &d1);
            let want: Vec<u64> = x.iter().map(|v| (*v >= 0) as u64).collect();
            assert_eq!(got, want, "bits = {bits}");
            assert_eq!(reconstruct(&k0, &k1), want, "compact, bits = {bits}");
            assert_eq!(c0.rounds, 1);
            let per_elem = bits.div_ceil(8) as u64;
            assert!(
                c0.bytes_sent <= per_elem * x.len() as u64 + 16,
                "bits = {bits}: {c0:?}"
            );
        }
    }

    #[test]
    fn sign_msb_less_than_and_shifted_threshold() {
        let bits = 20;
        let mut prg = Prg::from_seed([7; 16]);
        let x = signed_inputs(&mut prg, 64, bits - 1);
        let y = signed_inputs(&mut prg, 64, bits - 1);
        let xs = share_for_test(&as_ring(&x), &mut prg);
        let ys = share_for_test(&as_ring(&y), &mut prg);
        let c = 1000i64;
        let (r0, r1) = run_pair(&dealer(8), |p| {
            let i = p.id.index();
            let s = sign(p, &xs[i], bits)?;
            let m = msb(p, &xs[i], bits)?;
            let lt = less_than(p, &xs[i], &ys[i], bits)?;
            let batch = DreluBatch::fetch(p, x.len(), bits)?;
            let opened = open_bits(p, &batch.masked_share(&xs[i])?, bits)?;
            let ge_c = batch.finish_at(p, &opened, c as u64)?;
            Ok((s, m, lt, ge_c))
        });
        let (a, b) = (r0.unwrap(), r1.unwrap());
        let sign_want: Vec<u64> = x
            .iter()
            .map(|v| if *v >= 0 { 1 } else { u64::MAX })
            .collect();
        assert_eq!(reconstruct(&a.0, &b.0), sign_want);
        assert_eq!(
            reconstruct(&a.1, &b.1),
            x.iter().map(|v| (*v < 0) as u64).collect::<Vec<_>>()
        );
        let lt_want: Vec<u64> = x.iter().zip(&y).map(|(a, b)| (a < b) as u64).collect();
        assert_eq!(reconstruct(&a.2, &b.2), lt_want);
        assert_eq!(
            reconstruct(&a.3, &b.3),
            x.iter().map(|v| (*v >= c) as u64).collect::<Vec<_>>()
        );
    }

    #[test]
    fn staged_batches_merge_their_openings_into_one_round() {
        let bits = 30;
        let mut prg = Prg::from_seed([21; 16]);
        let x = signed_inputs(&mut prg, 90, bits);
        let xs = share_for_test(&as_ring(&x), &mut prg);
        let (r0, r1) = run_pair(&dealer(22), |p| {
            let i = p.id.index();
            let d = DreluBatch::fetch(p, x.len(), bits)?;
            let r = ReluBatch::fetch(p, x.len(), bits)?;
            let (dm, rm) = (d.masked_share(&xs[i])?, r.masked_share(&xs[i])?);
            let opened = crate::arith::open_many(p, &[(&dm, bits), (&rm, 64)])?;
            let rounds = p.online_meter().total().rounds;
            Ok((d.finish(p, &opened[0])?, r.finish(p, &opened[1])?.0, rounds))
        });
        let (a, b) = (r0.unwrap(), r1.unwrap());
        assert_eq!(a.2, 1);
        assert_eq!(
            reconstruct(&a.0, &b.0),
            x.iter().map(|v| (*v >= 0) as u64).collect::<Vec<_>>()
        );
        assert_eq!(
            reconstruct(&a.1, &b.1),
            x.iter().map(|v| (*v).max(0) as u64).collect::<Vec<_>>()
        );
    }

    #[test]
    fn select_multiplies_by_arithmetic_and_xor_bits() {
        let mut prg = Prg::from_seed([11; 16]);
        let n = 200;
        let b: Vec<u64> = (0..n).map(|_| prg.next_u64() & 1).collect();
        let x = prg.gen_u64s(n);
        let bs = share_for_test(&b, &mut prg);
        let xor0: Vec<u64> = (0..n).map(|_| prg.next_u64() & 1).collect();
        let xor_bs = [
            xor0.clone(),
            xor0.iter().zip(&b).map(|(a, c)| a ^ c).collect::<Vec<_>>(),
        ];
        let xs = share_for_test(&x, &mut prg);
        let (r0, r1) = run_pair(&dealer(12), |p| {
            let i = p.id.index();
            let arith = select(p, &bs[i], &xs[i])?;
            let xor = select(p, &xor_bs[i], &xs[i])?;
            Ok((arith, xor, p.online_meter().total()))
        });
        let (a, b2) = (r0.unwrap(), r1.unwrap());
        let want: Vec<u64> = b.iter().zip(&x).map(|(b, x)| b * x).collect();
        assert_eq!(reconstruct(&a.0, &b2.0), want);
        assert_eq!(reconstruct(&a.1, &b2.1), want);
        assert_eq!(a.2.rounds, 2);
    }

    #[test]
    fn relu_matches_plaintext_with_full_width_values() {
        for bits in [2u32, 5, 16, 37, 64] {
            let mut prg = Prg::from_seed([bits as u8 + 40; 16]);
            let x = signed_inputs(&mut prg, 130, bits);
            let xs = share_for_test(&as_ring(&x), &mut prg);
            let (r0, r1) = run_pair(&dealer(bits as u8 + 1), |p| {
                let i = p.id.index();
                let out = relu_with_drelu(p, &xs[i], bits)?;
                let rounds = p.online_meter().total().rounds;
                let compact = relu_compact_with_drelu(p, &xs[i], bits)?;
                let compact_rounds = p.online_meter().total().rounds - rounds;
                Ok((out, rounds, compact, compact_rounds))
            });
            let ((y0, d0), c0, (cy0, cd0), compact_rounds) = r0.unwrap();
            let ((y1, d1), _, (cy1, cd1), _) = r1.unwrap();
            assert_eq!(compact_rounds, 2);
            assert_eq!(
                reconstruct(&cy0, &cy1),
                reconstruct(&y0, &y1),
                "compact ReLU, bits = {bits}"
            );
            assert_eq!(
                reconstruct(&cd0, &cd1),
                reconstruct(&d0, &d1),
                "compact DReLU, bits = {bits}"
            );
            let want: Vec<u64> = x.iter().map(|v| (*v).max(0) as u64).collect();
            assert_eq!(reconstruct(&y0, &y1), want, "bits = {bits}");
            assert_eq!(
                reconstruct(&d0, &d1),
                x.iter().map(|v| (*v >= 0) as u64).collect::<Vec<_>>()
            );
            assert_eq!(c0, 1, "one-round ReLU");
        }
    }

    #[test]
    fn max_rows_matches_plaintext_for_odd_and_even_widths() {
        for (rows, cols) in [(1usize, 1usize), (3, 2), (4, 7), (2, 16), (5, 13)] {
            let bits = 24;
            let mut prg = Prg::from_seed([(rows * 31 + cols) as u8; 16]);
            let x = signed_inputs(&mut prg, rows * cols, bits);
            let x: Vec<i64> = x.into_iter().take(rows * cols).collect();
            let xs = share_for_test(&as_ring(&x), &mut prg);
            let (r0, r1) = run_pair(&dealer(3), |p| {
                let i = p.id.index();
                let m = max_rows(p, &xs[i], rows, cols, bits)?;
                let costs = p.online_meter().total();
                let compact = max_rows_with(p, &xs[i], rows, cols, bits, ReluGate::CompactKey)?;
                Ok((
                    m,
                    costs,
                    compact,
                    p.online_meter().total().rounds - costs.rounds,
                ))
            });
            let (m0, c0, k0, compact_rounds) = r0.unwrap();
            let (m1, _, k1, _) = r1.unwrap();
            assert_eq!(
                reconstruct(&k0, &k1),
                reconstruct(&m0, &m1),
                "compact {rows}×{cols}"
            );
            assert_eq!(compact_rounds, 2 * c0.rounds);
            let want: Vec<u64> = x
                .chunks(cols)
                .map(|r| *r.iter().max().unwrap() as u64)
                .collect();
            assert_eq!(reconstruct(&m0, &m1), want, "{rows}×{cols}");
            let levels = (cols as f64).log2().ceil() as u64;
            assert_eq!(c0.rounds, levels, "{rows}×{cols}");
        }
    }

    #[test]
    fn bad_widths_and_shapes_are_errors() {
        let (r0, r1) = run_pair(&dealer(1), |p| drelu(p, &[1, 2], 1));
        assert!(matches!(r0, Err(ProtocolError::Range(_))));
        assert!(matches!(r1, Err(ProtocolError::Range(_))));
        let (r0, _) = run_pair(&dealer(1), |p| relu(p, &[1], 65));
        assert!(matches!(r0, Err(ProtocolError::Range(_))));
        let (r0, _) = run_pair(&dealer(1), |p| max_rows(p, &[1, 2, 3], 2, 2, 10));
        assert!(matches!(r0, Err(ProtocolError::Shape(_))));
        let (r0, _) = run_pair(&dealer(1), |p| max_rows(p, &[1, 2], 1, 2, 64));
        assert!(matches!(r0, Err(ProtocolError::Range(_))));
        let (r0, _) = run_pair(&dealer(1), |p| select(p, &[1, 0], &[3]));
        assert!(matches!(r0, Err(ProtocolError::Shape(_))));
        let (r0, r1) = run_pair(&dealer(1), |p| drelu(p, &[], 10));
        assert_eq!(r0.unwrap(), Vec::<u64>::new());
        assert_eq!(r1.unwrap(), Vec::<u64>::new());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

        #[test]
        fn drelu_and_relu_agree_with_ideal_functionality(
            bits in 2u32..=64,
            raw in proptest::collection::vec(any::<u64>(), 1..40),
            seed in any::<[u8; 16]>(),
        ) {
            let x: Vec<i64> = raw.iter().map(|v| comet_core::ring::sign_extend(v & mask_bits(bits), bits) as i64).collect();
            let mut prg = Prg::from_seed(seed);
            let xs = share_for_test(&as_ring(&x), &mut prg);
            let d = InProcessDealer::new(Dealer::with_prg(Prg::from_seed(prg.next_seed())));
            let (r0, r1) = run_pair(&d, |p| {
                let i = p.id.index();
                Ok((drelu(p, &xs[i], bits)?, relu(p, &xs[i], bits)?, relu_compact(p, &xs[i], bits)?, drelu_compact(p, &xs[i], bits)?))
            });
            let (a, b) = (r0.unwrap(), r1.unwrap());
            prop_assert_eq!(reconstruct(&a.2, &b.2), reconstruct(&a.1, &b.1));
            prop_assert_eq!(reconstruct(&a.3, &b.3), reconstruct(&a.0, &b.0));
            let want_d: Vec<u64> = x.iter().map(|v| (*v >= 0) as u64).collect();
            let want_r: Vec<u64> = x.iter().map(|v| (*v).max(0) as u64).collect();
            prop_assert_eq!(reconstruct(&a.0, &b.0), want_d);
            prop_assert_eq!(reconstruct(&a.1, &b.1), want_r);
        }
    }
}
