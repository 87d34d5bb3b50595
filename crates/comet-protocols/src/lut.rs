//! Secret-index lookup tables from a 1-bit DPF (SIGMA style, fss-notes §4).
//!
//! API (shares are additive over Z_2^64, tables are public `&[u64]` of 2^m entries):
//!
//! | function | result | rounds | online bytes / element / party |
//! |---|---|---|---|
//! | [`lookup`]`(p, index, m_bits, table)` | table[index mod 2^m] | 2 | ⌈m/8⌉ + 8 |
//! | [`lookup_many`]`(p, index, m_bits, &[t_1, …, t_k])` | t_j[index mod 2^m] for each j | 2 | ⌈m/8⌉ + 8k |
//! | [`LutBatch`] `fetch` → `masked_share` → (caller opens) → `lookup_opened` | same | 1 after the caller's opening | 8k |
//!
//! [`LutBatch::expand`] / [`LutBatch::finish`] split the second round further, so a caller can
//! merge the v̂ opening with other messages.
//!
//! **How.** The dealer draws an index mask r ∈ Z_2^m and a 1-bit early-terminated DPF at r
//! (key ≈ 16(m − 5) bytes, full-domain evaluation 2^(m−6) AES). The servers open
//! x̂ = index + r mod 2^m (m bits). Party b expands its point-vector share t_b and computes
//! `v_b = (−1)^b Σ_i T[x̂ − i]·t_b(i)`. Off the point t_0(i) = t_1(i), so `v_0 + v_1 = s·T[x̂ − r]
//! = s·T[index]` with a sign s = ±1 known only to the dealer (which party's bit is 1 at r).
//! Instead of SIGMA's opened sign bit plus Select, the key carries shares of s, of a random ρ
//! and of s·ρ: the servers open v̂ = v + ρ (64 bits) and output `s_b·v̂ − (sρ)_b`, whose sum
//! is `s²·T[index] = T[index]`. Each table gets its own ρ_j (one DPF serves all tables).
//! Cost per element: 2 rounds, m + 64k bits each way, key = DPF(m) + (1 + k) words for P1,
//! DPF(m) + a shared seed for P0.

use crate::arith::open_bits;
use crate::error::check_len;
use crate::{Party, ProtocolError};
use comet_core::ring::mask_bits;
use comet_core::PartyId;
use comet_dealer::kinds::lut::{LutKeys, LutParams, MAX_LUT_BITS, MAX_LUT_TABLES};
use comet_fss::dpf_eval_all;
use rayon::prelude::*;

/// A batch of table lookups whose keys are fetched and whose index is not yet opened.
#[derive(Debug)]
pub struct LutBatch {
    keys: LutKeys,
}

fn check_tables(m_bits: u32, tables: &[&[u64]]) -> Result<(), ProtocolError> {
    if !(1..=MAX_LUT_BITS).contains(&m_bits) {
        return Err(ProtocolError::Range(format!(
            "lookup-table index width {m_bits} is outside 1..={MAX_LUT_BITS}"
        )));
    }
    if tables.is_empty() || tables.len() > MAX_LUT_TABLES as usize {
        return Err(ProtocolError::Shape(format!(
            "lookup needs 1..={MAX_LUT_TABLES} tables, got {}",
            tables.len()
        )));
    }
    for (j, t) in tables.iter().enumerate() {
        check_len(&format!("lookup table {j}"), t.len(), 1usize << m_bits)?;
    }
    Ok(())
}

/// The table reversed and doubled, `D[k] = T[(2^m − 1 − k) mod 2^m]` for k < 2^(m+1), so that
/// `T[(x̂ − i) mod 2^m] = D[2^m − 1 − x̂ + i]`: every lookup reads one contiguous window.
fn reversed_doubled(table: &[u64]) -> Vec<u64> {
    let size = table.len();
    (0..2 * size)
        .map(|k| table[(size - 1 - (k % size)) % size])
        .collect()
}

impl LutBatch {
    /// Fetches keys for `n` lookups with `m_bits`-bit indices into `tables` tables.
    pub fn fetch(
        p: &mut Party,
        n: usize,
        m_bits: u32,
        tables: usize,
    ) -> Result<Self, ProtocolError> {
        if !(1..=MAX_LUT_BITS).contains(&m_bits) {
            return Err(ProtocolError::Range(format!(
                "lookup-table index width {m_bits} is outside 1..={MAX_LUT_BITS}"
            )));
        }
        if tables == 0 || tables > MAX_LUT_TABLES as usize {
            return Err(ProtocolError::Shape(format!(
                "lookup needs 1..={MAX_LUT_TABLES} tables, got {tables}"
            )));
        }
        let keys = if n == 0 {
            LutKeys {
                m_bits,
                tables: tables as u32,
                mask: Vec::new(),
                sign: Vec::new(),
                out_mask: Vec::new(),
                sign_out_mask: Vec::new(),
                dpf: Vec::new(),
            }
        } else {
            p.correlation::<LutKeys>(&LutParams {
                n,
                m_bits,
                tables: tables as u32,
            })?
        };
        Ok(Self { keys })
    }

    /// Number of lookups in the batch.
    pub fn len(&self) -> usize {
        self.keys.mask.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.keys.mask.is_empty()
    }

    /// Index width m; open the masked index modulo 2^m.
    pub fn m_bits(&self) -> u32 {
        self.keys.m_bits
    }

    /// Number of tables each index is looked up in.
    pub fn tables(&self) -> usize {
        self.keys.tables as usize
    }

    /// This server's share of x̂ = index + r mod 2^m, to be opened with m bits.
    pub fn masked_share(&self, index: &[u64]) -> Result<Vec<u64>, ProtocolError> {
        check_len("lookup index", index.len(), self.len())?;
        let m = mask_bits(self.keys.m_bits);
        Ok(index
            .iter()
            .zip(&self.keys.mask)
            .map(|(a, r)| a.wrapping_add(*r) & m)
            .collect())
    }

    /// Local step on the opened x̂: this server's shares of v̂_j = v_j + ρ_j for every element
    /// and table (element-major, `i·tables + j`), the message of the second round.
    pub fn expand(
        &self,
        p: &Party,
        x_hat: &[u64],
        tables: &[&[u64]],
    ) -> Result<Vec<u64>, ProtocolError> {
        check_len("opened lookup index", x_hat.len(), self.len())?;
        check_tables(self.keys.m_bits, tables)?;
        check_len("lookup tables", tables.len(), self.tables())?;
        let party = p.id;
        let size = 1usize << self.keys.m_bits;
        let index_mask = (size - 1) as u64;
        let doubled: Vec<Vec<u64>> = tables.iter().map(|t| reversed_doubled(t)).collect();
        let k = self.tables();
        let mut out = vec![0u64; self.len() * k];
        out.par_chunks_mut(k)
            .enumerate()
            .with_min_len(4)
            .for_each(|(i, o)| {
                let bits = dpf_eval_all(party, &self.keys.dpf[i]);
                let start = size - 1 - (x_hat[i] & index_mask) as usize;
                for (j, d) in doubled.iter().enumerate() {
                    let window = &d[start..start + size];
                    let mut v = 0u64;
                    // Constant-time in the DPF bits: every entry is multiplied by its bit.
                    for (w, &word) in bits.iter().enumerate() {
                        let chunk = &window[(64 * w).min(size)..(64 * w + 64).min(size)];
                        for (b, &entry) in chunk.iter().enumerate() {
                            v = v.wrapping_add(((word >> b) & 1).wrapping_mul(entry));
                        }
                    }
                    if party == PartyId::P1 {
                        v = v.wrapping_neg();
                    }
                    o[j] = v.wrapping_add(self.keys.out_mask[i * k + j]);
                }
            });
        Ok(out)
    }

    /// Output shares from the opened v̂ (element-major, as [`LutBatch::expand`]): one vector
    /// per table, `s_b·v̂ − (sρ)_b`.
    pub fn finish(&self, v_hat: &[u64]) -> Result<Vec<Vec<u64>>, ProtocolError> {
        let k = self.tables();
        check_len("opened lookup values", v_hat.len(), self.len() * k)?;
        let mut out = vec![Vec::with_capacity(self.len()); k];
        for (i, row) in v_hat.chunks_exact(k).enumerate() {
            for (j, v) in row.iter().enumerate() {
                out[j].push(
                    self.keys.sign[i]
                        .wrapping_mul(*v)
                        .wrapping_sub(self.keys.sign_out_mask[i * k + j]),
                );
            }
        }
        Ok(out)
    }

    /// Lookups for an index whose masked value x̂ = index + r mod 2^m (from
    /// [`LutBatch::masked_share`]) the caller has already opened: one round (v̂, 64 bits per
    /// element and table).
    pub fn lookup_opened(
        &self,
        p: &mut Party,
        x_hat: &[u64],
        tables: &[&[u64]],
    ) -> Result<Vec<Vec<u64>>, ProtocolError> {
        if self.is_empty() {
            check_tables(self.keys.m_bits, tables)?;
            return Ok(vec![Vec::new(); tables.len()]);
        }
        let mine = self.expand(p, x_hat, tables)?;
        let theirs = p.exchange(&mine, 64)?;
        let v_hat: Vec<u64> = mine
            .iter()
            .zip(&theirs)
            .map(|(a, b)| a.wrapping_add(*b))
            .collect();
        self.finish(&v_hat)
    }
}

/// Shares of `tables[j][index mod 2^m]` for every table j (all of 2^m entries) and every
/// element of the secret `index`. Two rounds: the masked index (m bits), then the masked
/// values (64 bits per table).
pub fn lookup_many(
    p: &mut Party,
    index: &[u64],
    m_bits: u32,
    tables: &[&[u64]],
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    check_tables(m_bits, tables)?;
    let batch = LutBatch::fetch(p, index.len(), m_bits, tables.len())?;
    if batch.is_empty() {
        return Ok(vec![Vec::new(); tables.len()]);
    }
    let x_hat = open_bits(p, &batch.masked_share(index)?, m_bits)?;
    batch.lookup_opened(p, &x_hat, tables)
}

/// Shares of `table[index mod 2^m]` for a secret `index` (`table` has 2^m entries, 1 ≤ m ≤ 20).
/// Two rounds; see [`lookup_many`].
pub fn lookup(
    p: &mut Party,
    index: &[u64],
    m_bits: u32,
    table: &[u64],
) -> Result<Vec<u64>, ProtocolError> {
    Ok(lookup_many(p, index, m_bits, &[table])?.swap_remove(0))
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

    #[test]
    fn lookup_matches_plaintext_for_every_index_of_small_tables() {
        for m in [1u32, 3, 6, 7, 8, 9] {
            let mut prg = Prg::from_seed([m as u8; 16]);
            let size = 1usize << m;
            let table = prg.gen_u64s(size);
            // Every index once, plus high garbage bits that must be ignored.
            let index: Vec<u64> = (0..size as u64)
                .map(|i| i | (prg.next_u64() << m))
                .collect();
            let shares = share_for_test(&index, &mut prg);
            let (r0, r1) = run_pair(&dealer(m as u8), |p| {
                let i = p.id.index();
                Ok((lookup(p, &shares[i], m, &table)?, p.online_meter().total()))
            });
            let (a, c0) = r0.unwrap();
            let (b, _) = r1.unwrap();
            let want: Vec<u64> = (0..size).map(|i| table[i]).collect();
            assert_eq!(reconstruct(&a, &b), want, "m = {m}");
            assert_eq!(c0.rounds, 2);
        }
    }

    #[test]
    fn lookup_many_and_preopened_index_share_one_key() {
        let m = 10;
        let mut prg = Prg::from_seed([5; 16]);
        let t1 = prg.gen_u64s(1 << m);
        let t2: Vec<u64> = (0..1u64 << m).map(|i| i * i).collect();
        let index: Vec<u64> = (0..300).map(|_| prg.next_u64()).collect();
        let shares = share_for_test(&index, &mut prg);
        let (r0, r1) = run_pair(&dealer(6), |p| {
            let i = p.id.index();
            let many = lookup_many(p, &shares[i], m, &[&t1, &t2])?;
            let before = p.online_meter().total().rounds;
            let batch = LutBatch::fetch(p, index.len(), m, 1)?;
            let x_hat = open_bits(p, &batch.masked_share(&shares[i])?, m)?;
            let mid = p.online_meter().total().rounds;
            let single = batch.lookup_opened(p, &x_hat, &[&t2])?;
            Ok((many, single, before, p.online_meter().total().rounds - mid))
        });
        let (a, b) = (r0.unwrap(), r1.unwrap());
        let idx: Vec<usize> = index
            .iter()
            .map(|v| (v & ((1 << m) - 1)) as usize)
            .collect();
        assert_eq!(
            reconstruct(&a.0[0], &b.0[0]),
            idx.iter().map(|&i| t1[i]).collect::<Vec<_>>()
        );
        assert_eq!(
            reconstruct(&a.0[1], &b.0[1]),
            idx.iter().map(|&i| t2[i]).collect::<Vec<_>>()
        );
        assert_eq!(
            reconstruct(&a.1[0], &b.1[0]),
            idx.iter().map(|&i| t2[i]).collect::<Vec<_>>()
        );
        assert_eq!(
            a.2, 2,
            "lookup_many takes two rounds for any number of tables"
        );
        assert_eq!(a.3, 1, "a pre-opened index costs one round");
    }

    #[test]
    fn bad_tables_are_errors() {
        let (r0, _) = run_pair(&dealer(1), |p| lookup(p, &[1], 4, &[0; 15]));
        assert!(matches!(r0, Err(ProtocolError::Shape(_))));
        let (r0, _) = run_pair(&dealer(1), |p| lookup(p, &[1], 0, &[0; 1]));
        assert!(matches!(r0, Err(ProtocolError::Range(_))));
        let (r0, _) = run_pair(&dealer(1), |p| lookup_many(p, &[1], 3, &[]));
        assert!(matches!(r0, Err(ProtocolError::Shape(_))));
        let (r0, r1) = run_pair(&dealer(1), |p| lookup(p, &[], 3, &[0; 8]));
        assert!(r0.unwrap().is_empty() && r1.unwrap().is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 16, .. ProptestConfig::default() })]

        #[test]
        fn lookup_agrees_with_ideal_functionality(
            m in 1u32..=13,
            raw in proptest::collection::vec(any::<u64>(), 1..20),
            seed in any::<[u8; 16]>(),
        ) {
            let mut prg = Prg::from_seed(seed);
            let table = prg.gen_u64s(1 << m);
            let shares = share_for_test(&raw, &mut prg);
            let d = InProcessDealer::new(Dealer::with_prg(Prg::from_seed(prg.next_seed())));
            let (r0, r1) = run_pair(&d, |p| lookup(p, &shares[p.id.index()], m, &table));
            let want: Vec<u64> = raw.iter().map(|v| table[(v & ((1u64 << m) - 1)) as usize]).collect();
            prop_assert_eq!(reconstruct(&r0.unwrap(), &r1.unwrap()), want);
        }
    }
}
