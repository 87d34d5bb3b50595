//! Keys for SiLU with narrow openings (`comet_protocols::nonlinear::silu`), tag 64: a gated
//! lookup table plus ReLU whose every nonlinear step ends in a *masked bit* or a *narrow
//! masked value*, so that the result is a public-coefficient combination of dealer-shared
//! monomials.
//!
//! Per element the dealer draws an input mask `r` (the protocol opens `x̂ = x + r mod 2^n`),
//! optionally a mask `u` for a second factor (`û = y + u mod 2^n_u`), a value mask `ρ`
//! (opening `v̂ = v + 2^(K−2) + ρ mod 2^K`) and two uniform bits `m`, `γ`, and hands out:
//!
//! * `r`, `u`, `ρ`: both halves are seeds;
//! * one 1-bit DPF key on `n − 1` bits at `r mod 2^(n−1)` (SIGMA comparison `1{x̂' < r'}`),
//!   evaluated at `x̂`, `x̂ − lo` and `x̂ − hi` for the ReLU sign and the gate `[lo, hi)`;
//! * one 1-bit DPF key on `index_bits` bits at `(r mod 2^n) >> index_shift`, for the table
//!   (its sign `s = ±1` is the party holding the 1 at α, fss-notes §4);
//! * XOR shares of `msb_n(r) ⊕ m` and of `γ` (P0: seed, P1: two bits in one byte);
//! * additive Z_2^64 shares of the monomials [`BASE_MONOMIALS`] (× [`UP_MONOMIALS`] with a
//!   second factor), with `R = (r mod 2^n) >> σ`, `q = msb_n(r)`, `ρ_K = ρ mod 2^K`,
//!   `m_ρ = msb_K(ρ)`, `R_u = (u mod 2^n_u) >> σ_u`, `q_u = msb_{n_u}(u)` (P0: seed, P1:
//!   explicit words).
//!
//! No DCF key at all: offline per element is two DPF keys (≈ 16·(n − 7) and
//! ≈ 16·(index_bits − 7) bytes) plus, for P1, 8 bytes per monomial.

use super::{check_size, expand, get_ring, get_seed, put_seed, share_with_seed};
use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::{ring, PartyId, Prg};
use comet_fss::{dpf_eval_bit, dpf_gen, DpfKey};
use comet_net::codec::{Reader, Writer};
use rayon::prelude::*;

/// Largest table index width (2^m entries are summed per element).
pub const MAX_INDEX_BITS: u32 = 20;

/// Names of the shared monomials of the first factor, in layout order (the constant 1 comes
/// first and is public): `R, q, m·R... ` as documented in the module.
pub const BASE_MONOMIALS: [&str; 11] = [
    "R",
    "q",
    "m",
    "m·R",
    "m·q",
    "s",
    "s·ρ_K",
    "s·m_ρ",
    "γ·s",
    "γ·s·ρ_K",
    "γ·s·m_ρ",
];

/// Monomials of the optional second factor: the constant 1, `R_u`, `q_u`.
pub const UP_MONOMIALS: [&str; 3] = ["1", "R_u", "q_u"];

/// Elements per parallel key-generation task (and per derived PRG seed).
const KEY_BLOCK: usize = 512;

/// Masked opening and truncation of the optional second factor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecondFactor {
    /// Ring width `n_u` of its opening (|y| < 2^(n_u − 2)).
    pub bits: u32,
    /// Faithful truncation shift `σ_u` applied to it.
    pub shift: u32,
}

/// Public parameters of narrow SiLU keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiluParams {
    /// Number of elements.
    pub n: usize,
    /// Ring width `n` of the input opening (|x| < 2^(n − 2)).
    pub bits: u32,
    /// Faithful truncation shift `σ` of the ReLU part (0: exact ReLU of x).
    pub in_shift: u32,
    /// Table index shift.
    pub index_shift: u32,
    /// Table index width.
    pub index_bits: u32,
    /// Ring width `K` of the table value opening (|T| < 2^(K − 2)).
    pub value_bits: u32,
    /// Optional second factor multiplied into the result.
    pub up: Option<SecondFactor>,
}

impl SiluParams {
    fn validate(&self) -> Result<(), DealerError> {
        check_size("SiLU elements", self.n)?;
        let bad = |what: String| Err(DealerError::InvalidParams(what));
        if !(3..=64).contains(&self.bits) || self.in_shift > self.bits - 2 {
            return bad(format!(
                "SiLU input width {} with shift {} (width 3..=64, shift ≤ width − 2)",
                self.bits, self.in_shift
            ));
        }
        if !(1..=MAX_INDEX_BITS).contains(&self.index_bits)
            || self.index_shift + self.index_bits > self.bits
        {
            return bad(format!(
                "table index bits {}..{} of a {}-bit input (width ≤ {MAX_INDEX_BITS})",
                self.index_shift,
                self.index_shift + self.index_bits,
                self.bits
            ));
        }
        if !(3..=62).contains(&self.value_bits) {
            return bad(format!("table value width {} (3..=62)", self.value_bits));
        }
        if let Some(up) = self.up {
            if !(3..=64).contains(&up.bits) || up.shift > up.bits - 2 {
                return bad(format!(
                    "second factor width {} with shift {}",
                    up.bits, up.shift
                ));
            }
        }
        Ok(())
    }

    /// Shared monomials per element.
    pub fn monomials(&self) -> usize {
        let ups = if self.up.is_some() { 3 } else { 1 };
        12 * ups - 1
    }
}

/// A server's half of narrow SiLU keys.
#[derive(Clone, Debug)]
pub struct SiluKeys {
    /// Share of the input mask `r`.
    pub r: Vec<u64>,
    /// Share of the second factor's mask `u` (empty without one).
    pub u: Vec<u64>,
    /// Share of the value mask `ρ`.
    pub rho: Vec<u64>,
    /// XOR share of `msb_n(r) ⊕ m` (bit 0) and of `γ` (bit 1), per element.
    pub bits: Vec<u8>,
    /// Comparison DPF keys on `n − 1` bits.
    pub cmp: Vec<DpfKey>,
    /// Table DPF keys on `index_bits` bits.
    pub table: Vec<DpfKey>,
    /// Monomial shares, element-major: `monomials()` words per element, in the order
    /// `[1·B…, R_u·(1, B…), q_u·(1, B…)]` without the public constant.
    pub monomials: Vec<u64>,
}

/// The dealer's secrets of one element and its two key pairs.
struct Element {
    words: Vec<u64>,
    bits1: u8,
    cmp: (DpfKey, DpfKey),
    table: (DpfKey, DpfKey),
}

fn element(p: &SiluParams, r: u64, u: u64, rho: u64, bits0: u64, prg: &mut Prg) -> Element {
    let r_n = r & ring::mask_bits(p.bits);
    let q = r_n >> (p.bits - 1);
    let coins = prg.next_u64();
    let (m, gamma) = (coins & 1, (coins >> 1) & 1);
    let cmp = dpf_gen(r_n & ring::mask_bits(p.bits - 1), p.bits - 1, prg);
    let alpha = (r_n >> p.index_shift) & ring::mask_bits(p.index_bits);
    let table = dpf_gen(alpha, p.index_bits, prg);
    let sign = if dpf_eval_bit(PartyId::P0, &table.0, alpha) == 1 {
        1u64
    } else {
        u64::MAX
    };
    let rho_k = rho & ring::mask_bits(p.value_bits);
    let m_rho = rho_k >> (p.value_bits - 1);
    let big_r = r_n >> p.in_shift;
    let sg = gamma.wrapping_mul(sign);
    let base = [
        1,
        big_r,
        q,
        m,
        m * big_r,
        m * q,
        sign,
        sign.wrapping_mul(rho_k),
        sign.wrapping_mul(m_rho),
        sg,
        sg.wrapping_mul(rho_k),
        sg.wrapping_mul(m_rho),
    ];
    let factors: Vec<u64> = match p.up {
        None => vec![1],
        Some(up) => {
            let u_n = u & ring::mask_bits(up.bits);
            vec![1, u_n >> up.shift, u_n >> (up.bits - 1)]
        }
    };
    let words = factors
        .iter()
        .flat_map(|f| base.iter().map(move |b| f.wrapping_mul(*b)))
        .skip(1)
        .collect();
    let bits1 = ((q ^ m ^ (bits0 & 1)) | ((gamma ^ ((bits0 >> 1) & 1)) << 1)) as u8;
    Element {
        words,
        bits1,
        cmp,
        table,
    }
}

fn write_keys(w: &mut Writer, keys: &[&DpfKey]) {
    let key_len = keys.first().map_or(0, |k| k.encoded_len());
    let blob: Vec<u8> = keys.par_iter().flat_map_iter(|k| k.to_bytes()).collect();
    w.u32(key_len as u32).bytes(&blob);
}

fn read_keys(r: &mut Reader, n: usize, n_bits: u32) -> Result<Vec<DpfKey>, DealerError> {
    let malformed = |e: &dyn std::fmt::Display| DealerError::malformed(SiluKeys::NAME, e);
    let key_len = r.u32().map_err(|e| malformed(&e))? as usize;
    let blob = r.bytes().map_err(|e| malformed(&e))?;
    if key_len == 0 || key_len.checked_mul(n) != Some(blob.len()) {
        return Err(malformed(&format!(
            "{} bytes of keys for {n} keys of {key_len} bytes",
            blob.len()
        )));
    }
    blob.par_chunks(key_len)
        .map(|chunk| {
            let key = DpfKey::from_bytes(chunk).map_err(|e| malformed(&e))?;
            if key.n_bits() != n_bits {
                return Err(malformed(&format!(
                    "DPF key on {} bits, expected {n_bits}",
                    key.n_bits()
                )));
            }
            Ok(key)
        })
        .collect()
}

impl CorrelationKind for SiluKeys {
    type Params = SiluParams;
    const TAG: u8 = 64;
    const NAME: &'static str = "narrow SiLU keys";

    fn encode_params(p: &SiluParams, w: &mut Writer) {
        w.u32(p.n as u32)
            .u8(p.bits as u8)
            .u8(p.in_shift as u8)
            .u8(p.index_shift as u8)
            .u8(p.index_bits as u8)
            .u8(p.value_bits as u8);
        match p.up {
            None => w.u8(0),
            Some(up) => w.u8(1).u8(up.bits as u8).u8(up.shift as u8),
        };
    }

    fn decode_params(r: &mut Reader) -> Result<SiluParams, DealerError> {
        let n = r.u32()? as usize;
        let bits = r.u8()? as u32;
        let in_shift = r.u8()? as u32;
        let index_shift = r.u8()? as u32;
        let index_bits = r.u8()? as u32;
        let value_bits = r.u8()? as u32;
        let up = match r.u8()? {
            0 => None,
            1 => Some(SecondFactor {
                bits: r.u8()? as u32,
                shift: r.u8()? as u32,
            }),
            other => {
                return Err(DealerError::InvalidParams(format!(
                    "second-factor flag {other}"
                )))
            }
        };
        let p = SiluParams {
            n,
            bits,
            in_shift,
            index_shift,
            index_bits,
            value_bits,
            up,
        };
        p.validate()?;
        Ok(p)
    }

    fn generate(p: &SiluParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        p.validate()?;
        let n = p.n;
        let seeds: Vec<_> = (0..7).map(|_| ctx.prg.next_seed()).collect();
        let r = ring::add(&expand(&seeds[0], n), &expand(&seeds[1], n));
        let u = if p.up.is_some() {
            ring::add(&expand(&seeds[2], n), &expand(&seeds[3], n))
        } else {
            vec![0; n]
        };
        let rho = ring::add(&expand(&seeds[4], n), &expand(&seeds[5], n));
        let bits0 = expand(&seeds[6], n);
        let block_seeds: Vec<_> = (0..n.div_ceil(KEY_BLOCK))
            .map(|_| ctx.prg.next_seed())
            .collect();
        let elements: Vec<Element> = block_seeds
            .par_iter()
            .enumerate()
            .flat_map_iter(|(b, seed)| {
                let mut prg = Prg::from_seed(*seed);
                (b * KEY_BLOCK..((b + 1) * KEY_BLOCK).min(n))
                    .map(|i| element(p, r[i], u[i], rho[i], bits0[i], &mut prg))
                    .collect::<Vec<_>>()
            })
            .collect();
        let words: Vec<u64> = elements
            .iter()
            .flat_map(|e| e.words.iter().copied())
            .collect();
        let (words_seed, words1) = share_with_seed(&words, ctx.prg);
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seeds[0]);
        put_seed(&mut w1, &seeds[1]);
        if p.up.is_some() {
            put_seed(&mut w0, &seeds[2]);
            put_seed(&mut w1, &seeds[3]);
        }
        put_seed(&mut w0, &seeds[4]);
        put_seed(&mut w1, &seeds[5]);
        put_seed(&mut w0, &seeds[6]);
        let bits1: Vec<u64> = elements.iter().map(|e| e.bits1 as u64).collect();
        w1.ring(&bits1, 2);
        put_seed(&mut w0, &words_seed);
        w1.ring(&words1, 64);
        write_keys(
            &mut w0,
            &elements.iter().map(|e| &e.cmp.0).collect::<Vec<_>>(),
        );
        write_keys(
            &mut w1,
            &elements.iter().map(|e| &e.cmp.1).collect::<Vec<_>>(),
        );
        write_keys(
            &mut w0,
            &elements.iter().map(|e| &e.table.0).collect::<Vec<_>>(),
        );
        write_keys(
            &mut w1,
            &elements.iter().map(|e| &e.table.1).collect::<Vec<_>>(),
        );
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, p: &SiluParams, bytes: &[u8]) -> Result<Self, DealerError> {
        p.validate()?;
        let n = p.n;
        let malformed = |e| DealerError::malformed(Self::NAME, e);
        let mut rd = Reader::new(bytes);
        let r = expand(&get_seed(&mut rd).map_err(malformed)?, n);
        let u = if p.up.is_some() {
            expand(&get_seed(&mut rd).map_err(malformed)?, n)
        } else {
            Vec::new()
        };
        let rho = expand(&get_seed(&mut rd).map_err(malformed)?, n);
        let words = n * p.monomials();
        let (bits, monomials) = match party {
            PartyId::P0 => {
                let bits = expand(&get_seed(&mut rd).map_err(malformed)?, n);
                let mono = expand(&get_seed(&mut rd).map_err(malformed)?, words);
                (bits.iter().map(|b| (b & 3) as u8).collect(), mono)
            }
            PartyId::P1 => {
                let bits = get_ring(&mut rd, n, Self::NAME)?;
                let mono = get_ring(&mut rd, words, Self::NAME)?;
                (bits.iter().map(|b| (b & 3) as u8).collect(), mono)
            }
        };
        let cmp = read_keys(&mut rd, n, p.bits - 1)?;
        let table = read_keys(&mut rd, n, p.index_bits)?;
        rd.finish().map_err(malformed)?;
        Ok(SiluKeys {
            r,
            u,
            rho,
            bits,
            cmp,
            table,
            monomials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_request, Dealer};
    use comet_fss::dpf_lt;

    fn params(up: bool) -> SiluParams {
        SiluParams {
            n: 70,
            bits: 24,
            in_shift: 12,
            index_shift: 16,
            index_bits: 8,
            value_bits: 13,
            up: up.then_some(SecondFactor {
                bits: 40,
                shift: 12,
            }),
        }
    }

    fn halves(p: &SiluParams) -> (SiluKeys, SiluKeys, [usize; 2]) {
        let mut dealer = Dealer::with_prg(Prg::from_seed([8; 16]));
        let request = encode_request::<SiluKeys>(p);
        let b0 = dealer.serve(PartyId::P0, &request).unwrap();
        let b1 = dealer.serve(PartyId::P1, &request).unwrap();
        (
            SiluKeys::decode(PartyId::P0, p, &b0).unwrap(),
            SiluKeys::decode(PartyId::P1, p, &b1).unwrap(),
            [b0.len(), b1.len()],
        )
    }

    #[test]
    fn halves_share_consistent_keys_bits_and_monomials() {
        for up in [false, true] {
            let p = params(up);
            let (h0, h1, _) = halves(&p);
            let w = p.monomials();
            for i in 0..p.n {
                let r_n = h0.r[i].wrapping_add(h1.r[i]) & ring::mask_bits(p.bits);
                let q = r_n >> (p.bits - 1);
                let low = r_n & ring::mask_bits(p.bits - 1);
                // The comparison key compares with r mod 2^(n−1).
                for v in [0, low.saturating_sub(1), low, low + 1] {
                    let lt =
                        dpf_lt(PartyId::P0, &h0.cmp[i], v) ^ dpf_lt(PartyId::P1, &h1.cmp[i], v);
                    assert_eq!(lt as u64, u64::from(v < low));
                }
                // The table key's point and sign.
                let alpha = (r_n >> p.index_shift) & ring::mask_bits(p.index_bits);
                let at = |k: &DpfKey, x| dpf_eval_bit(PartyId::P0, k, x);
                assert_eq!(
                    at(&h0.table[i], alpha) ^ dpf_eval_bit(PartyId::P1, &h1.table[i], alpha),
                    1
                );
                let sign = if at(&h0.table[i], alpha) == 1 {
                    1u64
                } else {
                    u64::MAX
                };
                let mono: Vec<u64> = (0..w)
                    .map(|k| h0.monomials[i * w + k].wrapping_add(h1.monomials[i * w + k]))
                    .collect();
                let m = ((h0.bits[i] ^ h1.bits[i]) & 1) as u64 ^ q;
                let gamma = (((h0.bits[i] ^ h1.bits[i]) >> 1) & 1) as u64;
                let rho = h0.rho[i].wrapping_add(h1.rho[i]) & ring::mask_bits(p.value_bits);
                let m_rho = rho >> (p.value_bits - 1);
                let big_r = r_n >> p.in_shift;
                let sg = gamma.wrapping_mul(sign);
                let base = [
                    big_r,
                    q,
                    m,
                    m * big_r,
                    m * q,
                    sign,
                    sign.wrapping_mul(rho),
                    sign.wrapping_mul(m_rho),
                    sg,
                    sg.wrapping_mul(rho),
                    sg.wrapping_mul(m_rho),
                ];
                assert_eq!(&mono[..11], &base[..]);
                if up {
                    let u_n = h0.u[i].wrapping_add(h1.u[i]) & ring::mask_bits(40);
                    for (f, chunk) in [u_n >> 12, u_n >> 39].iter().zip(mono[11..].chunks(12)) {
                        assert_eq!(chunk[0], *f);
                        for (c, b) in chunk[1..].iter().zip(&base) {
                            assert_eq!(*c, f.wrapping_mul(*b));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn offline_halves_are_small_and_bad_requests_fail() {
        let (_, _, sizes) = halves(&params(false));
        let per_element = sizes[1] as f64 / 70.0;
        assert!(
            per_element < 700.0,
            "P1 gets {per_element} bytes per element"
        );
        let mut dealer = Dealer::new();
        for p in [
            SiluParams {
                bits: 2,
                ..params(false)
            },
            SiluParams {
                in_shift: 23,
                ..params(false)
            },
            SiluParams {
                index_shift: 20,
                ..params(false)
            },
            SiluParams {
                value_bits: 2,
                ..params(false)
            },
            SiluParams {
                n: 0,
                ..params(false)
            },
            SiluParams {
                up: Some(SecondFactor {
                    bits: 40,
                    shift: 39,
                }),
                ..params(false)
            },
        ] {
            assert!(
                dealer
                    .serve(PartyId::P0, &encode_request::<SiluKeys>(&p))
                    .is_err(),
                "{p:?}"
            );
        }
        let p = params(true);
        let half = dealer
            .serve(PartyId::P1, &encode_request::<SiluKeys>(&p))
            .unwrap();
        for cut in [0, 40, half.len() - 1] {
            assert!(SiluKeys::decode(PartyId::P1, &p, &half[..cut]).is_err());
        }
        assert!(SiluKeys::decode(PartyId::P1, &params(false), &half).is_err());
    }
}
