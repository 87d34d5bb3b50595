//! Correlation of the DPF lookup-table gate (tag 33), consumed by `comet_protocols::lut`.
//!
//! For each element the dealer draws an index mask r ∈ Z_2^m and a 1-bit early-terminated DPF
//! at r (SIGMA style, fss-notes §4). Party b's full-domain evaluation t_b satisfies
//! t_0(i) − t_1(i) = s·1{i = r} with a sign s = ±1 only the dealer knows, so
//! `v_b = (−1)^b Σ_i T[x̂ − i]·t_b(i)` sums to s·T[x̂ − r]. The key also carries shares of s
//! and, per table j, of a random ρ_j and of s·ρ_j: the servers open v̂_j = v_j + ρ_j and output
//! s_b·v̂_j − (sρ_j)_b, whose sum is s²·T_j[x] = T_j[x].

use super::compare::{gen_key_pairs, get_keys, put_keys};
use super::{check_size, expand, get_ring, get_seed, put_seed};
use crate::{CorrelationKind, DealerError, GenContext};
use comet_core::ring::mask_bits;
use comet_core::PartyId;
use comet_fss::{dpf_eval_bit, dpf_gen, DpfKey};
use comet_net::codec::{Reader, Writer};

/// Largest supported index width: the gate evaluates the whole 2^m domain per element.
pub const MAX_LUT_BITS: u32 = 20;
/// Largest number of tables looked up with one index.
pub const MAX_LUT_TABLES: u32 = 64;

/// Public parameters of a batch of lookups: `n` indices of `m_bits` bits, each looked up in
/// `tables` tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LutParams {
    /// Number of indices.
    pub n: usize,
    /// Index width m (1..=[`MAX_LUT_BITS`]); tables have 2^m entries.
    pub m_bits: u32,
    /// Number of tables sharing each index (1..=[`MAX_LUT_TABLES`]).
    pub tables: u32,
}

fn check_lut_params(p: &LutParams) -> Result<(), DealerError> {
    if !(1..=MAX_LUT_BITS).contains(&p.m_bits) {
        return Err(DealerError::InvalidParams(format!(
            "lookup-table index width {} is outside 1..={MAX_LUT_BITS}",
            p.m_bits
        )));
    }
    if !(1..=MAX_LUT_TABLES).contains(&p.tables) {
        return Err(DealerError::InvalidParams(format!(
            "lookup-table count {} is outside 1..={MAX_LUT_TABLES}",
            p.tables
        )));
    }
    Ok(())
}

/// A server's half of `n` lookup-table keys.
#[derive(Clone, Debug)]
pub struct LutKeys {
    /// Index width m.
    pub m_bits: u32,
    /// Number of tables per index.
    pub tables: u32,
    /// Share of the index mask r (mod 2^m).
    pub mask: Vec<u64>,
    /// Additive share of the sign s = ±1.
    pub sign: Vec<u64>,
    /// Additive shares of ρ_j, element-major (`i·tables + j`).
    pub out_mask: Vec<u64>,
    /// Additive shares of s·ρ_j, element-major.
    pub sign_out_mask: Vec<u64>,
    /// 1-bit DPF keys at r on m bits.
    pub dpf: Vec<DpfKey>,
}

impl CorrelationKind for LutKeys {
    type Params = LutParams;
    const TAG: u8 = 33;
    const NAME: &'static str = "lookup-table keys";

    fn encode_params(p: &LutParams, w: &mut Writer) {
        w.u32(p.n as u32);
        w.u8(p.m_bits as u8);
        w.u8(p.tables as u8);
    }

    fn decode_params(r: &mut Reader) -> Result<LutParams, DealerError> {
        let n = r.u32()? as usize;
        let m_bits = r.u8()? as u32;
        let tables = r.u8()? as u32;
        Ok(LutParams { n, m_bits, tables })
    }

    fn generate(params: &LutParams, ctx: &mut GenContext) -> Result<[Vec<u8>; 2], DealerError> {
        check_size("lookup elements", params.n)?;
        check_lut_params(params)?;
        let LutParams { n, m_bits, tables } = *params;
        let t = tables as usize;
        let nt = n * t;
        let seeds = [ctx.prg.next_seed(), ctx.prg.next_seed()];
        let h0 = expand(&seeds[0], 2 * n + 2 * nt);
        let h1 = expand(&seeds[1], n + nt);
        let m = mask_bits(m_bits);
        let r: Vec<u64> = (0..n).map(|i| h0[i].wrapping_add(h1[i]) & m).collect();
        let (k0, k1) = gen_key_pairs(n, ctx.prg, |i, prg| dpf_gen(r[i], m_bits, prg));
        let mut sign1 = Vec::with_capacity(n);
        let mut sign_rho1 = Vec::with_capacity(nt);
        for i in 0..n {
            // s = t_0(r) − t_1(r): +1 when P0 holds the point's 1, −1 otherwise.
            let s = if dpf_eval_bit(PartyId::P0, &k0[i], r[i]) == 1 {
                1u64
            } else {
                u64::MAX
            };
            sign1.push(s.wrapping_sub(h0[n + i]));
            for j in 0..t {
                let rho = h0[2 * n + i * t + j].wrapping_add(h1[n + i * t + j]);
                sign_rho1.push(s.wrapping_mul(rho).wrapping_sub(h0[2 * n + nt + i * t + j]));
            }
        }
        let (mut w0, mut w1) = (Writer::new(), Writer::new());
        put_seed(&mut w0, &seeds[0]);
        put_keys(&mut w0, &k0);
        put_seed(&mut w1, &seeds[1]);
        w1.ring(&sign1, 64);
        w1.ring(&sign_rho1, 64);
        put_keys(&mut w1, &k1);
        Ok([w0.finish(), w1.finish()])
    }

    fn decode(party: PartyId, params: &LutParams, bytes: &[u8]) -> Result<Self, DealerError> {
        check_lut_params(params)?;
        let LutParams { n, m_bits, tables } = *params;
        let nt = n * tables as usize;
        let m = mask_bits(m_bits);
        let mut r = Reader::new(bytes);
        let seed = get_seed(&mut r)?;
        let (mask, sign, out_mask, sign_out_mask) = match party {
            PartyId::P0 => {
                let v = expand(&seed, 2 * n + 2 * nt);
                (
                    v[..n].iter().map(|x| x & m).collect(),
                    v[n..2 * n].to_vec(),
                    v[2 * n..2 * n + nt].to_vec(),
                    v[2 * n + nt..].to_vec(),
                )
            }
            PartyId::P1 => {
                let v = expand(&seed, n + nt);
                let sign = get_ring(&mut r, n, Self::NAME)?;
                let sign_out_mask = get_ring(&mut r, nt, Self::NAME)?;
                (
                    v[..n].iter().map(|x| x & m).collect(),
                    sign,
                    v[n..].to_vec(),
                    sign_out_mask,
                )
            }
        };
        let dpf: Vec<DpfKey> = get_keys(&mut r, n, Self::NAME)?;
        r.finish()
            .map_err(|e| DealerError::malformed(Self::NAME, e))?;
        if let Some(k) = dpf.iter().find(|k| k.n_bits() != m_bits) {
            return Err(DealerError::Malformed(format!(
                "{}: DPF key of {} bits, expected {m_bits}",
                Self::NAME,
                k.n_bits()
            )));
        }
        Ok(LutKeys {
            m_bits,
            tables,
            mask,
            sign,
            out_mask,
            sign_out_mask,
            dpf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{encode_request, Dealer};
    use comet_fss::dpf_eval_all;

    #[test]
    fn lut_keys_are_consistent_and_reject_damage() {
        let params = LutParams {
            n: 12,
            m_bits: 9,
            tables: 3,
        };
        let mut d = Dealer::with_prg(comet_core::Prg::from_seed([4; 16]));
        let req = encode_request::<LutKeys>(&params);
        let h = [
            d.serve(PartyId::P0, &req).unwrap(),
            d.serve(PartyId::P1, &req).unwrap(),
        ];
        let k0 = LutKeys::decode(PartyId::P0, &params, &h[0]).unwrap();
        let k1 = LutKeys::decode(PartyId::P1, &params, &h[1]).unwrap();
        for i in 0..params.n {
            let r = (k0.mask[i].wrapping_add(k1.mask[i]) & 511) as usize;
            let (e0, e1) = (
                dpf_eval_all(PartyId::P0, &k0.dpf[i]),
                dpf_eval_all(PartyId::P1, &k1.dpf[i]),
            );
            let s = k0.sign[i].wrapping_add(k1.sign[i]);
            for x in 0..512 {
                let (b0, b1) = ((e0[x / 64] >> (x % 64)) & 1, (e1[x / 64] >> (x % 64)) & 1);
                assert_eq!(b0 ^ b1, (x == r) as u64);
                if x == r {
                    assert_eq!(s, b0.wrapping_sub(b1), "sign is t_0(r) − t_1(r)");
                }
            }
            for j in 0..3 {
                let rho = k0.out_mask[i * 3 + j].wrapping_add(k1.out_mask[i * 3 + j]);
                let srho = k0.sign_out_mask[i * 3 + j].wrapping_add(k1.sign_out_mask[i * 3 + j]);
                assert_eq!(srho, s.wrapping_mul(rho));
            }
        }
        for (b, half) in h.iter().enumerate() {
            let party = PartyId::from_index(b);
            for cut in [0, 8, 16, 20, half.len() / 2, half.len() - 1] {
                assert!(
                    LutKeys::decode(party, &params, &half[..cut]).is_err(),
                    "cut at {cut}"
                );
            }
            let mut bad = half.clone();
            bad.push(1);
            assert!(LutKeys::decode(party, &params, &bad).is_err());
        }
        let other = LutParams {
            m_bits: 10,
            ..params
        };
        assert!(
            LutKeys::decode(PartyId::P0, &other, &h[0]).is_err(),
            "keys of another width"
        );
        for bad in [
            LutParams {
                m_bits: 0,
                ..params
            },
            LutParams {
                m_bits: 21,
                ..params
            },
            LutParams {
                tables: 0,
                ..params
            },
        ] {
            let req = encode_request::<LutKeys>(&bad);
            assert!(matches!(
                d.serve(PartyId::P0, &req),
                Err(DealerError::InvalidParams(_))
            ));
        }
    }
}
