//! Keys for the nonlinear functions of `comet_protocols::nonlinear` (SiLU, GeLU, exp,
//! reciprocal, rsqrt): a *gated lookup table*, a *two-table exponential* and a *multi-point
//! ReLU* (tags 60–62).
//!
//! Both kinds mask each input element with a uniform `r ∈ Z_2^64` (both halves of `r` are
//! seeds); the servers open `x̂ = x + r` once and every key below is keyed to that same `r`
//! (each FSS key is generated with fresh randomness, so each server's view stays
//! pseudo-random whatever `r` is).
//!
//! **Gated lookup table** ([`GatedLutKeys`]) evaluates `g(x)·T[j]` with
//! `j = ((x̂ >> s) − (r >> s)) mod 2^m = ⌊(x + (r mod 2^s)) / 2^s⌋ mod 2^m` and a gate
//! `g = Σ_t w_t·1{x ≥ c_t}` over public thresholds `c_t` and public integer weights `w_t`:
//!
//! * a 1-bit DPF at `α = (r >> s) mod 2^m`; with `s_dpf = ±1` the sign of the party holding
//!   the 1 at α, the full-domain sums `v_b = (−1)^b Σ_i T[x̂' − i]·t_b(i)` give
//!   `v_0 + v_1 = s_dpf·T[j]` (fss-notes §4);
//! * a DCF with a two-word payload `(1 − 2q)·(s_dpf, s_dpf·ρ)` on the low `n − 1` bits of `r`
//!   (`q = msb_n(r)`), plus shares of `V = (s_dpf, s_dpf·ρ)` and `q·V`. Evaluated at
//!   `x̂ − c` it yields shares of `1{x ≥ c}·V` (the DReLU identity of `comet_fss::gates`);
//! * shares of a uniform `ρ`. The servers open `v̂ = v + ρ` and output
//!   `[g·s_dpf]·v̂ − [g·s_dpf·ρ] = g·s_dpf²·T[j] = g·T[j]`;
//! * optionally a one-round ReLU key for the same `r` (SiLU and GeLU are ReLU minus a table).
//!
//! **Two-table exponential** ([`ExpPairKeys`]): two DPF tables multiplied by one Beaver pair
//! whose sign fix and gate ride on DCF payloads (see the type).
//!
//! **Multi-point ReLU** ([`MultiReluKeys`]): a one-round ReLU key for `r`, evaluated at
//! `x̂ − c` for many public `c` to get shares of `ReLU(x − c)` (spline knots).

use super::{check_size, expand, get_ring, get_seed, put_seed, share_with_seed};
use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::{ring, PartyId, Prg};
use comet_fss::{dcf_gen_vec, dpf_eval_bit, dpf_gen, relu_gen, DcfKey, DpfKey, ReluKey};
use comet_net::codec::{Reader, Writer};

/// Largest lookup-table index width (2^m table entries are summed per element).
pub const MAX_LUT_BITS: u32 = 20;

/// Public parameters of a gated lookup table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatedLutParams {
    /// Number of elements.
    pub n: usize,
    /// Signed width of the gate comparisons (inputs satisfy |x − c| < 2^(cmp_bits − 1)).
    pub cmp_bits: u32,
    /// Index shift `s`: the table index is taken from bits `s..s+m` of the input.
    pub index_shift: u32,
    /// Index width `m` (table of 2^m entries).
    pub index_bits: u32,
    /// Whether a one-round ReLU key for the same mask is included.
    pub with_relu: bool,
}

impl GatedLutParams {
    fn validate(&self) -> Result<(), DealerError> {
        check_size("gated LUT elements", self.n)?;
        if !(2..=64).contains(&self.cmp_bits) {
            return Err(DealerError::InvalidParams(format!(
                "comparison width {} outside 2..=64",
                self.cmp_bits
            )));
        }
        if !(1..=MAX_LUT_BITS).contains(&self.index_bits) || self.index_shift + self.index_bits > 64
        {
            return Err(DealerError::InvalidParams(format!(
                "table index bits {}..{} (width allowed 1..={MAX_LUT_BITS}, within 64 bits)",
                self.index_shift,
                self.index_shift + self.index_bits
            )));
        }
        Ok(())
    }
}

/// A server's half of a gated lookup table (one entry per element).
#[derive(Clone, Debug)]
pub struct GatedLutKeys {
    /// Share of the input mask `r`.
    pub r: Vec<u64>,
    /// Share of the opening mask `ρ` of `v`.
    pub rho: Vec<u64>,
    /// Shares of `V = (s_dpf, s_dpf·ρ)`, interleaved `[V0, V1]` per element.
    pub v: Vec<[u64; 2]>,
    /// Shares of `q·V` with `q = msb_{cmp_bits}(r)`.
    pub qv: Vec<[u64; 2]>,
    /// DCF keys for `1{x̂' < r'}` with payload `(1 − 2q)·V` on `cmp_bits − 1` bits.
    pub cmp: Vec<DcfKey<2>>,
    /// 1-bit DPF keys at `(r >> s) mod 2^m`.
    pub dpf: Vec<DpfKey>,
    /// One-round ReLU keys for the same `r` (when requested).
    pub relu: Option<Vec<ReluKey>>,
}

fn put_key(w: &mut Writer, bytes: &[u8]) {
    w.bytes(bytes);
}

fn interleave(words: &[[u64; 2]]) -> Vec<u64> {
    words.iter().flat_map(|p| p.iter().copied()).collect()
}

fn pairs(flat: &[u64]) -> Vec<[u64; 2]> {
    flat.chunks_exact(2).map(|c| [c[0], c[1]]).collect()
}

/// Draws `n` uniform words as the sum of two seed expansions: `(value, seed0, seed1)`.
fn seeded_uniform(n: usize, prg: &mut Prg) -> (Vec<u64>, comet_core::Seed, comet_core::Seed) {
    let (s0, s1) = (prg.next_seed(), prg.next_seed());
    (ring::add(&expand(&s0, n), &expand(&s1, n)), s0, s1)
}

impl CorrelationKind for GatedLutKeys {
    type Params = GatedLutParams;
    const TAG: u8 = 60;
    const NAME: &'static str = "gated lookup table";

    fn encode_params(p: &GatedLutParams, w: &mut Writer) {
        w.u32(p.n as u32)
            .u8(p.cmp_bits as u8)
            .u8(p.index_shift as u8)
            .u8(p.index_bits as u8);
        w.u8(p.with_relu as u8);
    }

    fn decode_params(r: &mut Reader) -> Result<GatedLutParams, DealerError> {
        let n = r.u32()? as usize;
        let cmp_bits = r.u8()? as u32;
        let index_shift = r.u8()? as u32;
        let index_bits = r.u8()? as u32;
        let with_relu = match r.u8()? {
            0 => false,
            1 => true,
            other => return Err(DealerError::InvalidParams(format!("ReLU flag {other}"))),
        };
        let p = GatedLutParams {
            n,
            cmp_bits,
            index_shift,
            index_bits,
            with_relu,
        };
        p.validate()?;
        Ok(p)
    }

    fn generate(p: &GatedLutParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        p.validate()?;
        let n = p.n;
        let (r, r_s0, r_s1) = seeded_uniform(n, ctx.prg);
        let (rho, rho_s0, rho_s1) = seeded_uniform(n, ctx.prg);
        let low_mask = ring::mask_bits(p.cmp_bits - 1);
        let index_mask = ring::mask_bits(p.index_bits);
        let mut v = Vec::with_capacity(n);
        let mut qv = Vec::with_capacity(n);
        let (mut cmp0, mut cmp1) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut dpf0, mut dpf1) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let (mut relu0, mut relu1) = (Vec::new(), Vec::new());
        for i in 0..n {
            let alpha = (r[i] >> p.index_shift) & index_mask;
            let (d0, d1) = dpf_gen(alpha, p.index_bits, ctx.prg);
            let sign = if dpf_eval_bit(PartyId::P0, &d0, alpha) == 1 {
                1u64
            } else {
                u64::MAX
            };
            let words = [sign, sign.wrapping_mul(rho[i])];
            let q = (r[i] >> (p.cmp_bits - 1)) & 1;
            let flip = 1u64.wrapping_sub(2 * q);
            let (c0, c1) = dcf_gen_vec(
                r[i] & low_mask,
                [flip.wrapping_mul(words[0]), flip.wrapping_mul(words[1])],
                p.cmp_bits - 1,
                64,
                ctx.prg,
            );
            v.push(words);
            qv.push([q.wrapping_mul(words[0]), q.wrapping_mul(words[1])]);
            cmp0.push(c0);
            cmp1.push(c1);
            dpf0.push(d0);
            dpf1.push(d1);
            if p.with_relu {
                let (k0, k1) = relu_gen(r[i], p.cmp_bits, ctx.prg);
                relu0.push(k0);
                relu1.push(k1);
            }
        }
        let (v_seed, v1) = share_with_seed(&interleave(&v), ctx.prg);
        let (qv_seed, qv1) = share_with_seed(&interleave(&qv), ctx.prg);
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &r_s0);
        put_seed(&mut w1, &r_s1);
        put_seed(&mut w0, &rho_s0);
        put_seed(&mut w1, &rho_s1);
        put_seed(&mut w0, &v_seed);
        w1.ring(&v1, 64);
        put_seed(&mut w0, &qv_seed);
        w1.ring(&qv1, 64);
        for (w, cmp, dpf, relu) in [
            (&mut w0, &cmp0, &dpf0, &relu0),
            (&mut w1, &cmp1, &dpf1, &relu1),
        ] {
            for i in 0..n {
                put_key(w, &cmp[i].to_bytes());
                put_key(w, &dpf[i].to_bytes());
                if p.with_relu {
                    put_key(w, &relu[i].to_bytes());
                }
            }
        }
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, p: &GatedLutParams, bytes: &[u8]) -> Result<Self, DealerError> {
        p.validate()?;
        let n = p.n;
        let bad = |e: &dyn std::fmt::Display| DealerError::malformed(Self::NAME, e);
        let mut r = Reader::new(bytes);
        let mask = expand(&get_seed(&mut r).map_err(|e| bad(&e))?, n);
        let rho = expand(&get_seed(&mut r).map_err(|e| bad(&e))?, n);
        let (v, qv) = match party {
            PartyId::P0 => (
                expand(&get_seed(&mut r).map_err(|e| bad(&e))?, 2 * n),
                expand(&get_seed(&mut r).map_err(|e| bad(&e))?, 2 * n),
            ),
            PartyId::P1 => (
                get_ring(&mut r, 2 * n, Self::NAME)?,
                get_ring(&mut r, 2 * n, Self::NAME)?,
            ),
        };
        let mut cmp = Vec::with_capacity(n);
        let mut dpf = Vec::with_capacity(n);
        let mut relu = Vec::new();
        for _ in 0..n {
            let c =
                DcfKey::<2>::from_bytes(r.bytes().map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            let d = DpfKey::from_bytes(r.bytes().map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            if c.n_bits() != p.cmp_bits - 1 || c.out_bits() != 64 || d.n_bits() != p.index_bits {
                return Err(DealerError::Malformed(format!(
                    "{}: key widths do not match the request",
                    Self::NAME
                )));
            }
            cmp.push(c);
            dpf.push(d);
            if p.with_relu {
                let k =
                    ReluKey::from_bytes(r.bytes().map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
                if k.n_bits() != p.cmp_bits {
                    return Err(DealerError::Malformed(format!(
                        "{}: ReLU width does not match",
                        Self::NAME
                    )));
                }
                relu.push(k);
            }
        }
        r.finish().map_err(|e| bad(&e))?;
        Ok(GatedLutKeys {
            r: mask,
            rho,
            v: pairs(&v),
            qv: pairs(&qv),
            cmp,
            dpf,
            relu: p.with_relu.then_some(relu),
        })
    }
}

/// Public parameters of a multi-point ReLU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiReluParams {
    /// Number of elements.
    pub n: usize,
    /// Signed width of the sign tests (|x − c| < 2^(bits − 1) for every evaluation point c).
    pub bits: u32,
}

/// A server's half of a multi-point ReLU: the mask share and one ReLU key per element.
#[derive(Clone, Debug)]
pub struct MultiReluKeys {
    /// Share of the input mask `r`.
    pub r: Vec<u64>,
    /// One-round ReLU keys for `r`.
    pub relu: Vec<ReluKey>,
}

impl CorrelationKind for MultiReluKeys {
    type Params = MultiReluParams;
    const TAG: u8 = 61;
    const NAME: &'static str = "multi-point ReLU";

    fn encode_params(p: &MultiReluParams, w: &mut Writer) {
        w.u32(p.n as u32).u8(p.bits as u8);
    }

    fn decode_params(r: &mut Reader) -> Result<MultiReluParams, DealerError> {
        let p = MultiReluParams {
            n: r.u32()? as usize,
            bits: r.u8()? as u32,
        };
        check_size("multi-point ReLU elements", p.n)?;
        if !(2..=64).contains(&p.bits) {
            return Err(DealerError::InvalidParams(format!(
                "ReLU width {} outside 2..=64",
                p.bits
            )));
        }
        Ok(p)
    }

    fn generate(p: &MultiReluParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        check_size("multi-point ReLU elements", p.n)?;
        if !(2..=64).contains(&p.bits) {
            return Err(DealerError::InvalidParams(format!(
                "ReLU width {} outside 2..=64",
                p.bits
            )));
        }
        let (r, s0, s1) = seeded_uniform(p.n, ctx.prg);
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &s0);
        put_seed(&mut w1, &s1);
        for &ri in &r {
            let (k0, k1) = relu_gen(ri, p.bits, ctx.prg);
            put_key(&mut w0, &k0.to_bytes());
            put_key(&mut w1, &k1.to_bytes());
        }
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(_party: PartyId, p: &MultiReluParams, bytes: &[u8]) -> Result<Self, DealerError> {
        let bad = |e: &dyn std::fmt::Display| DealerError::malformed(Self::NAME, e);
        let mut r = Reader::new(bytes);
        let mask = expand(&get_seed(&mut r).map_err(|e| bad(&e))?, p.n);
        let mut relu = Vec::with_capacity(p.n);
        for _ in 0..p.n {
            let k = ReluKey::from_bytes(r.bytes().map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            if k.n_bits() != p.bits {
                return Err(DealerError::Malformed(format!(
                    "{}: ReLU width does not match",
                    Self::NAME
                )));
            }
            relu.push(k);
        }
        r.finish().map_err(|e| bad(&e))?;
        Ok(MultiReluKeys { r: mask, relu })
    }
}

/// Public parameters of the two-table exponential (`comet_protocols::nonlinear::exp_neg_wide`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpPairParams {
    /// Number of elements.
    pub n: usize,
    /// Signed width of the gate comparison.
    pub cmp_bits: u32,
    /// Low split `L`: the low table is indexed by `x mod 2^L` (a DPF on `L + 1` bits).
    pub low_bits: u32,
    /// Index width of the high table (indexed by bits `L..L+m` of `x`).
    pub high_bits: u32,
}

impl ExpPairParams {
    fn validate(&self) -> Result<(), DealerError> {
        check_size("exponential elements", self.n)?;
        if !(2..=64).contains(&self.cmp_bits)
            || !(1..MAX_LUT_BITS).contains(&self.low_bits)
            || !(1..=MAX_LUT_BITS).contains(&self.high_bits)
            || self.low_bits + self.high_bits > 64
        {
            return Err(DealerError::InvalidParams(format!(
                "exponential tables {self:?}"
            )));
        }
        Ok(())
    }
}

/// A server's half of the two-table exponential `g·T_hi[j]·T_lo[u]`.
///
/// Two DPFs give `v_1 = s_1·T_hi[j]` (at `(r >> L) mod 2^m`) and `v_2 = s_2·T_lo[u]` (at
/// `r mod 2^L`, on `L + 1` bits so that `u = (x̂ mod 2^L) − (r mod 2^L)` is exact). A Beaver
/// pair `(a, b, c = a·b)` multiplies them; the gate `g = 1{x ≥ c_gate}` and the sign
/// `s = s_1·s_2` are folded into the four words `W = s·(1, b, a, c)` carried by two DCF keys
/// (payload `(1 − 2q)·W`, the DReLU identity), so after opening `e_1 = v_1 − a`,
/// `e_2 = v_2 − b` the output `e_1e_2·[gW_0] + e_1·[gW_1] + e_2·[gW_2] + [gW_3]` equals
/// `g·s·v_1·v_2 = g·T_hi[j]·T_lo[u]`.
#[derive(Clone, Debug)]
pub struct ExpPairKeys {
    /// Share of the input mask `r`.
    pub r: Vec<u64>,
    /// Shares of the Beaver masks `a` and `b`.
    pub a: Vec<u64>,
    /// See `a`.
    pub b: Vec<u64>,
    /// Shares of `W` (4 words per element).
    pub w: Vec<[u64; 4]>,
    /// Shares of `q·W`.
    pub qw: Vec<[u64; 4]>,
    /// DCF keys with payload `(1 − 2q)·(W_0, W_1)`.
    pub cmp_a: Vec<DcfKey<2>>,
    /// DCF keys with payload `(1 − 2q)·(W_2, W_3)`.
    pub cmp_b: Vec<DcfKey<2>>,
    /// DPF keys of the high table.
    pub dpf_high: Vec<DpfKey>,
    /// DPF keys of the low table.
    pub dpf_low: Vec<DpfKey>,
}

fn quads(flat: &[u64]) -> Vec<[u64; 4]> {
    flat.chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect()
}

impl CorrelationKind for ExpPairKeys {
    type Params = ExpPairParams;
    const TAG: u8 = 62;
    const NAME: &'static str = "two-table exponential";

    fn encode_params(p: &ExpPairParams, w: &mut Writer) {
        w.u32(p.n as u32)
            .u8(p.cmp_bits as u8)
            .u8(p.low_bits as u8)
            .u8(p.high_bits as u8);
    }

    fn decode_params(r: &mut Reader) -> Result<ExpPairParams, DealerError> {
        let p = ExpPairParams {
            n: r.u32()? as usize,
            cmp_bits: r.u8()? as u32,
            low_bits: r.u8()? as u32,
            high_bits: r.u8()? as u32,
        };
        p.validate()?;
        Ok(p)
    }

    fn generate(p: &ExpPairParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        p.validate()?;
        let n = p.n;
        let (r, r_s0, r_s1) = seeded_uniform(n, ctx.prg);
        let (a, a_s0, a_s1) = seeded_uniform(n, ctx.prg);
        let (b, b_s0, b_s1) = seeded_uniform(n, ctx.prg);
        let low_mask = ring::mask_bits(p.cmp_bits - 1);
        let mut w = Vec::with_capacity(4 * n);
        let mut qw = Vec::with_capacity(4 * n);
        let mut keys: [Vec<(Vec<u8>, Vec<u8>)>; 4] = Default::default();
        for i in 0..n {
            let hi_alpha = (r[i] >> p.low_bits) & ring::mask_bits(p.high_bits);
            let lo_alpha = r[i] & ring::mask_bits(p.low_bits);
            let (h0, h1) = dpf_gen(hi_alpha, p.high_bits, ctx.prg);
            let (l0, l1) = dpf_gen(lo_alpha, p.low_bits + 1, ctx.prg);
            let sign_of = |k: &DpfKey, alpha: u64| {
                if dpf_eval_bit(PartyId::P0, k, alpha) == 1 {
                    1u64
                } else {
                    u64::MAX
                }
            };
            let s = sign_of(&h0, hi_alpha).wrapping_mul(sign_of(&l0, lo_alpha));
            let words = [
                s,
                s.wrapping_mul(b[i]),
                s.wrapping_mul(a[i]),
                s.wrapping_mul(a[i].wrapping_mul(b[i])),
            ];
            let q = (r[i] >> (p.cmp_bits - 1)) & 1;
            let flip = 1u64.wrapping_sub(2 * q);
            let (ca0, ca1) = dcf_gen_vec(
                r[i] & low_mask,
                [flip.wrapping_mul(words[0]), flip.wrapping_mul(words[1])],
                p.cmp_bits - 1,
                64,
                ctx.prg,
            );
            let (cb0, cb1) = dcf_gen_vec(
                r[i] & low_mask,
                [flip.wrapping_mul(words[2]), flip.wrapping_mul(words[3])],
                p.cmp_bits - 1,
                64,
                ctx.prg,
            );
            w.extend_from_slice(&words);
            qw.extend(words.iter().map(|v| q.wrapping_mul(*v)));
            keys[0].push((ca0.to_bytes(), ca1.to_bytes()));
            keys[1].push((cb0.to_bytes(), cb1.to_bytes()));
            keys[2].push((h0.to_bytes(), h1.to_bytes()));
            keys[3].push((l0.to_bytes(), l1.to_bytes()));
        }
        let (w_seed, w1) = share_with_seed(&w, ctx.prg);
        let (qw_seed, qw1) = share_with_seed(&qw, ctx.prg);
        let (mut o0, mut o1) = (Writer::new(), Writer::new());
        for (s0, s1) in [(r_s0, r_s1), (a_s0, a_s1), (b_s0, b_s1)] {
            put_seed(&mut o0, &s0);
            put_seed(&mut o1, &s1);
        }
        put_seed(&mut o0, &w_seed);
        o1.ring(&w1, 64);
        put_seed(&mut o0, &qw_seed);
        o1.ring(&qw1, 64);
        for i in 0..n {
            for kind in &keys {
                put_key(&mut o0, &kind[i].0);
                put_key(&mut o1, &kind[i].1);
            }
        }
        Ok([o0.finish(), o1.finish()])
    }

    fn decode(party: PartyId, p: &ExpPairParams, bytes: &[u8]) -> Result<Self, DealerError> {
        p.validate()?;
        let n = p.n;
        let bad = |e: &dyn std::fmt::Display| DealerError::malformed(Self::NAME, e);
        let mut r = Reader::new(bytes);
        let mut seeded = || -> Result<Vec<u64>, DealerError> {
            Ok(expand(&get_seed(&mut r).map_err(|e| bad(&e))?, n))
        };
        let (mask, a, b) = (seeded()?, seeded()?, seeded()?);
        let (w, qw) = match party {
            PartyId::P0 => (
                expand(&get_seed(&mut r).map_err(|e| bad(&e))?, 4 * n),
                expand(&get_seed(&mut r).map_err(|e| bad(&e))?, 4 * n),
            ),
            PartyId::P1 => (
                get_ring(&mut r, 4 * n, Self::NAME)?,
                get_ring(&mut r, 4 * n, Self::NAME)?,
            ),
        };
        let mut out = ExpPairKeys {
            r: mask,
            a,
            b,
            w: quads(&w),
            qw: quads(&qw),
            cmp_a: Vec::with_capacity(n),
            cmp_b: Vec::with_capacity(n),
            dpf_high: Vec::with_capacity(n),
            dpf_low: Vec::with_capacity(n),
        };
        for _ in 0..n {
            for cmp in [&mut out.cmp_a, &mut out.cmp_b] {
                let k = DcfKey::<2>::from_bytes(r.bytes().map_err(|e| bad(&e))?)
                    .map_err(|e| bad(&e))?;
                if k.n_bits() != p.cmp_bits - 1 || k.out_bits() != 64 {
                    return Err(DealerError::Malformed(format!(
                        "{}: DCF widths do not match",
                        Self::NAME
                    )));
                }
                cmp.push(k);
            }
            for (dpf, bits) in [
                (&mut out.dpf_high, p.high_bits),
                (&mut out.dpf_low, p.low_bits + 1),
            ] {
                let k = DpfKey::from_bytes(r.bytes().map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
                if k.n_bits() != bits {
                    return Err(DealerError::Malformed(format!(
                        "{}: DPF width does not match",
                        Self::NAME
                    )));
                }
                dpf.push(k);
            }
        }
        r.finish().map_err(|e| bad(&e))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_request, Dealer};
    use comet_core::Prg;

    /// Both halves of a request, P0's first.
    fn halves<K: CorrelationKind>(dealer: &mut Dealer, p: &K::Params) -> [Vec<u8>; 2] {
        let request = encode_request::<K>(p);
        let h0 = dealer.serve(PartyId::P0, &request).unwrap();
        let h1 = dealer.serve(PartyId::P1, &request).unwrap();
        [h0, h1]
    }

    fn cut_halves_fail<K: CorrelationKind>(p: &K::Params, half: &[u8], party: PartyId) {
        for cut in [0, 7, half.len() / 2, half.len() - 1] {
            assert!(
                K::decode(party, p, &half[..cut]).is_err(),
                "{}: cut at {cut}",
                K::NAME
            );
        }
    }

    #[test]
    fn masks_reconstruct_and_bad_input_is_an_error() {
        let mut dealer = Dealer::with_prg(Prg::from_seed([1; 16]));
        let g = GatedLutParams {
            n: 3,
            cmp_bits: 20,
            index_shift: 4,
            index_bits: 9,
            with_relu: true,
        };
        let [h0, h1] = halves::<GatedLutKeys>(&mut dealer, &g);
        let k0 = GatedLutKeys::decode(PartyId::P0, &g, &h0).unwrap();
        let k1 = GatedLutKeys::decode(PartyId::P1, &g, &h1).unwrap();
        for i in 0..3 {
            // V = (s, s·ρ) with s = ±1 and ρ the opening mask.
            let s = k0.v[i][0].wrapping_add(k1.v[i][0]);
            let rho = k0.rho[i].wrapping_add(k1.rho[i]);
            assert!(s == 1 || s == u64::MAX);
            assert_eq!(k0.v[i][1].wrapping_add(k1.v[i][1]), s.wrapping_mul(rho));
        }
        cut_halves_fail::<GatedLutKeys>(&g, &h1, PartyId::P1);
        cut_halves_fail::<GatedLutKeys>(&g, &h0, PartyId::P0);
        let e = ExpPairParams {
            n: 2,
            cmp_bits: 20,
            low_bits: 5,
            high_bits: 6,
        };
        let [e0, e1] = halves::<ExpPairKeys>(&mut dealer, &e);
        let x0 = ExpPairKeys::decode(PartyId::P0, &e, &e0).unwrap();
        let x1 = ExpPairKeys::decode(PartyId::P1, &e, &e1).unwrap();
        for i in 0..2 {
            let w: Vec<u64> = (0..4)
                .map(|k| x0.w[i][k].wrapping_add(x1.w[i][k]))
                .collect();
            let (a, b) = (x0.a[i].wrapping_add(x1.a[i]), x0.b[i].wrapping_add(x1.b[i]));
            assert_eq!(w[1], w[0].wrapping_mul(b));
            assert_eq!(w[2], w[0].wrapping_mul(a));
            assert_eq!(w[3], w[0].wrapping_mul(a).wrapping_mul(b));
        }
        cut_halves_fail::<ExpPairKeys>(&e, &e1, PartyId::P1);
        let m = MultiReluParams { n: 2, bits: 24 };
        let [m0, _] = halves::<MultiReluKeys>(&mut dealer, &m);
        cut_halves_fail::<MultiReluKeys>(&m, &m0, PartyId::P0);
        // Wrong widths in the request are refused, and halves do not decode under other params.
        for bad in [
            GatedLutParams {
                cmp_bits: 1,
                ..g.clone()
            },
            GatedLutParams {
                index_bits: 0,
                ..g.clone()
            },
            GatedLutParams {
                index_bits: MAX_LUT_BITS + 1,
                ..g.clone()
            },
            GatedLutParams { n: 0, ..g.clone() },
        ] {
            assert!(
                dealer
                    .serve(PartyId::P0, &encode_request::<GatedLutKeys>(&bad))
                    .is_err(),
                "{bad:?}"
            );
        }
        assert!(dealer
            .serve(
                PartyId::P0,
                &encode_request::<MultiReluKeys>(&MultiReluParams { n: 2, bits: 65 })
            )
            .is_err());
        assert!(GatedLutKeys::decode(
            PartyId::P1,
            &GatedLutParams {
                cmp_bits: 21,
                ..g.clone()
            },
            &h1
        )
        .is_err());
        assert!(
            MultiReluKeys::decode(PartyId::P0, &MultiReluParams { n: 2, bits: 23 }, &m0).is_err()
        );
    }
}
