//! Truncation by a public shift (division by `2^s` rounding down), one round, no
//! probabilistic failure, and the fixed-point products built on it.
//!
//! # The protocol (`TruncateExact`, `TruncateFaithful`)
//!
//! Inputs are shares of a signed `x` with `−2^62 ≤ x < 2^62` and a public shift
//! `1 ≤ s ≤ 62`. The dealer supplies shares of a uniform `r ∈ Z_2^64`, of `r_high = r >> s`,
//! of `r_msb = r >> 63` and, for the exact variant, a DCF key pair for `v ↦ 1{v < r mod 2^s}`
//! on `s`-bit inputs with payload 1 in Z_2^64 (`comet_dealer::kinds::trunc`).
//!
//! 1. The servers open `x̂ = x' + r mod 2^64` with `x' = x + 2^62 ∈ [0, 2^63)` (one round,
//!    8 bytes per element each way). `x̂` is uniform whatever `x` is.
//! 2. Over the integers `x' = x̂ − r + c·2^64` with the carry `c = 1{x' + r ≥ 2^64}`. Since
//!    `x' < 2^63`: if `msb(r) = 0` then `x' + r < 2^64` and `c = 0`; if `msb(r) = 1` then
//!    `c = 1` exactly when `x̂ = x' + r − 2^64 < 2^63`. So `c = msb(r)·(1 − msb(x̂))`, linear in
//!    the shared `msb(r)` because `msb(x̂)` is public.
//! 3. Splitting `x̂ = X·2^s + x_l`, `r = R·2^s + r_l` (low parts below `2^s`):
//!    `x' = (X − R)·2^s + (x_l − r_l) + c·2^64` and `−2^s < x_l − r_l < 2^s`, so
//!
//!    ```text
//!    ⌊x' / 2^s⌋ = X − R − w + 2^(64−s)·c,    w = 1{x_l < r_l}.
//!    ```
//!
//!    `X` is public, `R = r_high` and `c` are linear in dealer shares, and `w` is the DCF
//!    evaluated locally at the public `x_l` (no extra round). Every term is taken mod 2^64;
//!    `2^(64−s)·msb(r)` only needs `msb(r) mod 2^s`, which halves the dealer's explicit data.
//! 4. `⌊x / 2^s⌋ = ⌊x' / 2^s⌋ − 2^(62−s)` because `2^s` divides `2^62`; P0 subtracts it.
//!
//! The result is the exact floor (arithmetic shift) for every input in range: no
//! wrap-around failure, no probability involved. The faithful variant drops `w`: its result
//! is `⌊x / 2^s⌋ + w`, i.e. the floor or one more (±1 ulp), still never wrapping, and needs
//! no DCF key. Inputs outside `[−2^62, 2^62)` give a wrong result (the range is public
//! knowledge of the caller: fixed-point values at 2f bits are far below it).
//!
//! # Narrow rings (`truncate_many_narrow`)
//!
//! If `|x| < 2^(L−2)` for a public width `L ≤ 64`, the same derivation runs inside Z_2^L: each
//! server reduces its share mod `2^L` (local), they open `x̂ = x + 2^(L−2) + r mod 2^L` (L bits
//! on the wire, packed to `⌈L/8⌉` bytes), the carry is `c = msb_L(r)·(1 − msb_L(x̂))`, and
//! `⌊x / 2^s⌋ = (x̂ >> s) − ((r mod 2^L) >> s) − w + 2^(L−s)·c − 2^(L−2−s)` with every dealer
//! term shared in Z_2^64, so the output is a Z_2^64 sharing of the sign-extended result
//! (needs `s ≤ L − 2`). The opening is uniform in Z_2^L whatever `x` is. `L = 64` is the
//! full-width protocol above.
//!
//! Costs per element: online 8 bytes each way (`⌈L/8⌉` in a narrow ring), one round, for both
//! variants. Offline: P0
//! gets seeds only; P1 gets `8 + ⌈s/8⌉` bytes; the exact variant adds one DCF key per server
//! (`3 + ⌈(193·s + 191)/8⌉` bytes, 317 bytes at s = 12).
//!
//! # Local helpers
//!
//! Reducing a shared value mod `2^k` is local: [`reduce_bits`] keeps the low `k` bits of each
//! share, and the results are shares of `x mod 2^k` over Z_2^k. Widening back needs sign
//! extension, which is not local.

use crate::arith::{self, open_bits, open_many};
use crate::error::check_len;
use crate::{Party, ProtocolError};
use comet_core::ring;
use comet_dealer::kinds::trunc::{TruncMask, TruncParams, TruncSegment, MAX_SHIFT, MIN_WIDTH};

/// The full-width offset that makes every input of the range non-negative: `x' = x + 2^62`.
const OFFSET_BITS: u32 = 62;

/// Which truncation to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TruncMode {
    /// Exact floor (`TruncateExact`): one DCF key per element offline.
    Exact,
    /// Floor or floor + 1 (`TruncateFaithful`): no DCF key, cheaper offline.
    Faithful,
}

/// Ideal functionality: shares of `⌊x / 2^shift⌋` (arithmetic shift of `x` read as `i64`),
/// exact for `−2^62 ≤ x < 2^62` and `shift ≤ 62`. One round.
pub fn truncate(p: &mut Party, x: &[u64], shift: u32) -> Result<Vec<u64>, ProtocolError> {
    single(truncate_many_with(p, &[(x, shift)], TruncMode::Exact)?)
}

/// Ideal functionality: shares of `⌊x / 2^shift⌋` or `⌊x / 2^shift⌋ + 1` (±1 ulp), same range
/// as [`truncate`], one round, no DCF key.
pub fn truncate_faithful(p: &mut Party, x: &[u64], shift: u32) -> Result<Vec<u64>, ProtocolError> {
    single(truncate_many_with(p, &[(x, shift)], TruncMode::Faithful)?)
}

/// Exact truncation of several vectors, each by its own shift, in one round.
pub fn truncate_many(
    p: &mut Party,
    parts: &[(&[u64], u32)],
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    truncate_many_with(p, parts, TruncMode::Exact)
}

/// Faithful (±1 ulp) truncation of several vectors, each by its own shift, in one round.
pub fn truncate_many_faithful(
    p: &mut Party,
    parts: &[(&[u64], u32)],
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    truncate_many_with(p, parts, TruncMode::Faithful)
}

/// Truncates each `(x, shift)` of `parts` in the chosen mode, all in one round. A shift of 0
/// returns the input unchanged; shifts above 62 are a [`ProtocolError::Range`].
pub fn truncate_many_with(
    p: &mut Party,
    parts: &[(&[u64], u32)],
    mode: TruncMode,
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    let wide: Vec<(&[u64], u32, u32)> = parts.iter().map(|&(x, s)| (x, s, 64)).collect();
    truncate_many_narrow_with(p, &wide, mode)
}

/// Faithful (±1 ulp) truncation of several vectors, each `(x, shift, width)` by its own
/// shift inside its own ring width `L = width`, in one round: shares (over Z_2^64) of
/// `⌊x / 2^shift⌋` or one more, for `−2^(L−2) ≤ x < 2^(L−2)`. Only `L` bits per element
/// cross the wire (byte-aligned: `⌈L/8⌉` bytes), against 8 for the full-width truncation.
/// `width = 64` is [`truncate_many_faithful`].
pub fn truncate_many_narrow(
    p: &mut Party,
    parts: &[(&[u64], u32, u32)],
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    truncate_many_narrow_with(p, parts, TruncMode::Faithful)
}

/// [`truncate_many_narrow`] in the chosen mode (the exact mode adds one DCF key on `shift`
/// bits per element offline; online costs are the same).
///
/// A shift of 0 returns the input unchanged. Errors: [`ProtocolError::Range`] for a width
/// outside 3..=64 or a shift above `width − 2`.
pub fn truncate_many_narrow_with(
    p: &mut Party,
    parts: &[(&[u64], u32, u32)],
    mode: TruncMode,
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    if let Some((_, s, l)) = parts
        .iter()
        .find(|(_, s, l)| !(MIN_WIDTH..=64).contains(l) || (*s > 0 && *s > l - 2))
    {
        return Err(ProtocolError::Range(format!(
            "truncation by {s} bits in a {l}-bit ring (width {MIN_WIDTH}..=64, shift ≤ width − 2 ≤ {MAX_SHIFT})"
        )));
    }
    // Parts that actually need the protocol, in layout order.
    let active: Vec<(&[u64], u32, u32)> = parts
        .iter()
        .copied()
        .filter(|(x, s, _)| *s > 0 && !x.is_empty())
        .collect();
    if active.is_empty() {
        return Ok(parts.iter().map(|(x, _, _)| x.to_vec()).collect());
    }
    let segments: Vec<TruncSegment> = active
        .iter()
        .map(|(x, s, l)| TruncSegment {
            len: x.len(),
            shift: *s,
            width: *l,
        })
        .collect();
    let params = TruncParams {
        exact: mode == TruncMode::Exact,
        segments,
    };
    let mask: TruncMask = p.correlation(&params)?;

    // Step 1: open x̂ = x + 2^(L−2) + r mod 2^L, each part at its own width, one round.
    let is_p0 = p.is_p0();
    let masked: Vec<u64> = active
        .iter()
        .flat_map(|(x, _, l)| x.iter().map(move |v| (v, *l)))
        .zip(&mask.r)
        .map(|((v, l), r)| {
            let offset = if is_p0 { 1u64 << (l - 2) } else { 0 };
            v.wrapping_add(*r).wrapping_add(offset) & ring::mask_bits(l)
        })
        .collect();
    let opened = open_runs(p, &masked, &active)?;
    let below_mask = match &mask.dcf {
        Some(keys) => comet_fss::dcf_eval_batch(p.id, keys, &opened),
        None => vec![0; opened.len()],
    };

    // Steps 2–4: ⌊x / 2^s⌋ = X − R − w + 2^(L−s)·msb_L(r)·(1 − msb_L(x̂)) − 2^(L−2−s).
    let shifts_widths = active
        .iter()
        .flat_map(|(x, s, l)| std::iter::repeat_n((*s, *l), x.len()));
    let flat: Vec<u64> = shifts_widths
        .enumerate()
        .map(|(i, (s, l))| {
            let x_hat = opened[i];
            let no_msb = 1 ^ (x_hat >> (l - 1));
            let carry = no_msb.wrapping_mul(mask.r_msb[i] << (l - s));
            let mut y = carry
                .wrapping_sub(mask.r_high[i])
                .wrapping_sub(below_mask[i]);
            if is_p0 {
                y = y.wrapping_add(x_hat >> s).wrapping_sub(1u64 << (l - 2 - s));
            }
            y
        })
        .collect();

    let mut pieces = flat.into_iter();
    Ok(parts
        .iter()
        .map(|(x, s, _)| {
            if *s > 0 {
                pieces.by_ref().take(x.len()).collect()
            } else {
                x.to_vec()
            }
        })
        .collect())
}

/// Opens `masked` (the concatenation of `parts`, already reduced to each part's width) in one
/// round; consecutive parts of the same width travel as one packed vector.
fn open_runs(
    p: &mut Party,
    masked: &[u64],
    parts: &[(&[u64], u32, u32)],
) -> Result<Vec<u64>, ProtocolError> {
    let mut runs: Vec<(usize, u32)> = Vec::new();
    for (x, _, l) in parts {
        match runs.last_mut() {
            Some((len, width)) if width == l => *len += x.len(),
            _ => runs.push((x.len(), *l)),
        }
    }
    if let [(_, width)] = runs[..] {
        return open_bits(p, masked, width);
    }
    let mut start = 0;
    let layout: Vec<(&[u64], u32)> = runs
        .iter()
        .map(|&(len, width)| {
            start += len;
            (&masked[start - len..start], width)
        })
        .collect();
    Ok(open_many(p, &layout)?.concat())
}

fn single(mut v: Vec<Vec<u64>>) -> Result<Vec<u64>, ProtocolError> {
    v.pop()
        .ok_or_else(|| ProtocolError::Shape("truncation returned no output".into()))
}

/// Ideal functionality: shares of `⌊x·y / 2^f⌋` for fixed-point `x`, `y` at `f` fractional
/// bits (`f = p.fp.frac_bits`), exact; needs `|x·y| < 2^62`. Two rounds (Beaver product, then
/// truncation: the truncation must open the finished product, so one round is not possible).
pub fn mul_fixed(p: &mut Party, x: &[u64], y: &[u64]) -> Result<Vec<u64>, ProtocolError> {
    mul_fixed_with(p, x, y, TruncMode::Exact)
}

/// As [`mul_fixed`] with a faithful (±1 ulp) truncation: same rounds and online bytes, no DCF
/// key offline.
pub fn mul_fixed_faithful(p: &mut Party, x: &[u64], y: &[u64]) -> Result<Vec<u64>, ProtocolError> {
    mul_fixed_with(p, x, y, TruncMode::Faithful)
}

/// Fixed-point product with the chosen truncation mode.
pub fn mul_fixed_with(
    p: &mut Party,
    x: &[u64],
    y: &[u64],
    mode: TruncMode,
) -> Result<Vec<u64>, ProtocolError> {
    let f = p.fp.frac_bits;
    single(mul_truncate_many(p, &[(x, y, f)], mode)?)
}

/// Ideal functionality: for each `(x_j, y_j, s_j)`, shares of `⌊x_j ⊙ y_j / 2^s_j⌋`
/// (element-wise), each product within `[−2^62, 2^62)`. Two rounds for all of them: one
/// Beaver opening over the concatenation, then one truncation round.
pub fn mul_truncate_many(
    p: &mut Party,
    parts: &[(&[u64], &[u64], u32)],
    mode: TruncMode,
) -> Result<Vec<Vec<u64>>, ProtocolError> {
    for (x, y, _) in parts {
        check_len("right operand of a product", y.len(), x.len())?;
    }
    let xs: Vec<u64> = parts
        .iter()
        .flat_map(|(x, _, _)| x.iter().copied())
        .collect();
    let ys: Vec<u64> = parts
        .iter()
        .flat_map(|(_, y, _)| y.iter().copied())
        .collect();
    let products = if xs.is_empty() {
        Vec::new()
    } else {
        arith::mul(p, &xs, &ys)?
    };
    let mut start = 0;
    let split: Vec<(&[u64], u32)> = parts
        .iter()
        .map(|(x, _, s)| {
            let piece = &products[start..start + x.len()];
            start += x.len();
            (piece, *s)
        })
        .collect();
    truncate_many_with(p, &split, mode)
}

/// Ideal functionality: shares of `⌊x·round(c·2^f) / 2^f⌋`, i.e. `c·x` at scale `f` for a
/// public real `c`. Exact, one round; needs `|x·round(c·2^f)| < 2^62`.
pub fn scale_public(p: &mut Party, x: &[u64], c: f64) -> Result<Vec<u64>, ProtocolError> {
    scale_public_with(p, x, c, TruncMode::Exact)
}

/// As [`scale_public`] with a faithful (±1 ulp) truncation.
pub fn scale_public_faithful(p: &mut Party, x: &[u64], c: f64) -> Result<Vec<u64>, ProtocolError> {
    scale_public_with(p, x, c, TruncMode::Faithful)
}

/// Multiplication by a public real with the chosen truncation mode.
pub fn scale_public_with(
    p: &mut Party,
    x: &[u64],
    c: f64,
    mode: TruncMode,
) -> Result<Vec<u64>, ProtocolError> {
    let scaled = c * p.fp.scale();
    if !scaled.is_finite() || scaled.abs() >= (1u64 << OFFSET_BITS) as f64 {
        return Err(ProtocolError::Range(format!(
            "public factor {c} does not fit at {} fractional bits",
            p.fp.frac_bits
        )));
    }
    let encoded = p.fp.encode(c);
    let product = ring::scale(x, encoded);
    single(truncate_many_with(p, &[(&product, p.fp.frac_bits)], mode)?)
}

/// Local: shares of `x mod 2^bits` over Z_2^bits (each share keeps its low `bits` bits). Used
/// to compare or look up in a smaller ring (fss-notes §2, "reduce the width first").
pub fn reduce_bits(x: &[u64], bits: u32) -> Vec<u64> {
    let mask = ring::mask_bits(bits);
    x.iter().map(|v| v & mask).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{run_pair, share_for_test};
    use comet_core::share::reconstruct;
    use comet_core::Prg;
    use comet_dealer::{Dealer, InProcessDealer};
    use proptest::prelude::*;

    const LIMIT: i64 = 1 << 62;

    fn dealer(seed: u8) -> InProcessDealer {
        InProcessDealer::new(Dealer::with_prg(Prg::from_seed([seed; 16])))
    }

    /// Signed values spread over every magnitude up to the range, plus the edges.
    fn test_values(prg: &mut Prg, n: usize) -> Vec<u64> {
        let edges = [
            0,
            1,
            -1,
            2,
            -2,
            LIMIT - 1,
            -LIMIT,
            -LIMIT + 1,
            LIMIT - 2,
            4095,
            4096,
            -4096,
            -4097,
        ];
        let mut v: Vec<u64> = edges.iter().map(|&e| e as u64).collect();
        while v.len() < n {
            let bits = 1 + prg.gen_index(62) as u32;
            let magnitude = prg.next_u64() & ring::mask_bits(bits);
            let signed = if prg.next_u64() & 1 == 1 {
                -(magnitude as i64)
            } else {
                magnitude as i64
            };
            v.push(signed as u64);
        }
        v.truncate(n);
        v
    }

    fn floor_shift(x: u64, s: u32) -> u64 {
        ((x as i64) >> s) as u64
    }

    /// Runs `truncate_many_with` on shared `values` for every shift; returns the opened
    /// results and P0's online costs.
    fn run_truncations(
        values: &[u64],
        shifts: &[u32],
        mode: TruncMode,
        seed: u8,
    ) -> (Vec<Vec<u64>>, comet_net::Costs) {
        let mut prg = Prg::from_seed([seed.wrapping_add(100); 16]);
        let xs = share_for_test(values, &mut prg);
        let d = dealer(seed);
        let (r0, r1) = run_pair(&d, |p| {
            let i = p.id.index();
            let parts: Vec<(&[u64], u32)> = shifts.iter().map(|&s| (&xs[i][..], s)).collect();
            let out = truncate_many_with(p, &parts, mode)?;
            Ok((out, p.online_meter().total()))
        });
        let (y0, costs) = r0.unwrap();
        let (y1, _) = r1.unwrap();
        (
            y0.iter().zip(&y1).map(|(a, b)| reconstruct(a, b)).collect(),
            costs,
        )
    }

    #[test]
    fn exact_truncation_is_the_floor_for_many_values_and_shifts() {
        let mut prg = Prg::from_seed([7; 16]);
        let values = test_values(&mut prg, 3000);
        let shifts = [1, 2, 11, 12, 13, 24, 40, 61, 62];
        let (results, costs) = run_truncations(&values, &shifts, TruncMode::Exact, 1);
        for (s, got) in shifts.iter().zip(&results) {
            for (x, y) in values.iter().zip(got) {
                assert_eq!(*y, floor_shift(*x, *s), "x = {}, shift {s}", *x as i64);
            }
        }
        assert_eq!(costs.rounds, 1, "all shifts in one round");
        let n = values.len() * shifts.len();
        assert_eq!(
            costs.bytes_sent as usize,
            5 + 8 * n,
            "8 bytes per element and a frame header"
        );
    }

    #[test]
    fn faithful_truncation_is_within_one_ulp_and_sometimes_rounds_up() {
        let mut prg = Prg::from_seed([8; 16]);
        let values = test_values(&mut prg, 3000);
        let shifts = [1, 12, 24, 40, 62];
        let (results, costs) = run_truncations(&values, &shifts, TruncMode::Faithful, 2);
        let mut rounded_up = 0;
        for (s, got) in shifts.iter().zip(&results) {
            for (x, y) in values.iter().zip(got) {
                let diff = y.wrapping_sub(floor_shift(*x, *s));
                assert!(
                    diff <= 1,
                    "x = {}, shift {s}: off by {}",
                    *x as i64,
                    diff as i64
                );
                rounded_up += diff as usize;
            }
        }
        // w = 1{x_l < r_l} is 1 for a fair share of elements; the exact variant must fix it.
        assert!(rounded_up > 1000, "only {rounded_up} results rounded up");
        assert_eq!(costs.rounds, 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn truncation_matches_the_ideal_functionality(
            raw in proptest::collection::vec(-LIMIT..LIMIT, 1..40),
            shift in prop_oneof![Just(1u32), Just(12), Just(24), Just(40), 1u32..=62],
            seed in any::<u8>(),
        ) {
            let values: Vec<u64> = raw.iter().map(|&v| v as u64).collect();
            let (exact, _) = run_truncations(&values, &[shift], TruncMode::Exact, seed);
            let (faithful, _) = run_truncations(&values, &[shift], TruncMode::Faithful, seed);
            for i in 0..values.len() {
                let floor = floor_shift(values[i], shift);
                prop_assert_eq!(exact[0][i], floor);
                prop_assert!(faithful[0][i].wrapping_sub(floor) <= 1);
            }
        }
    }

    /// Signed values inside the narrow range `[−2^(L−2), 2^(L−2))`: the edges, small values
    /// and random magnitudes.
    fn narrow_values(prg: &mut Prg, width: u32, n: usize) -> Vec<u64> {
        let limit = 1i64 << (width - 2);
        let mut v: Vec<u64> = [
            0,
            1,
            -1,
            limit - 1,
            -limit,
            -limit + 1,
            limit - 2,
            limit / 2,
        ]
        .iter()
        .map(|&e| e as u64)
        .collect();
        while v.len() < n {
            let bits = 1 + prg.gen_index(width as usize - 2) as u32;
            let magnitude = (prg.next_u64() & ring::mask_bits(bits)) as i64;
            let signed = if prg.next_u64() & 1 == 1 {
                -magnitude
            } else {
                magnitude.min(limit - 1)
            };
            v.push(signed as u64);
        }
        v.truncate(n);
        v
    }

    /// Runs `truncate_many_narrow_with` on one shared vector per `(values, shift, width)`;
    /// returns the opened results and P0's online costs.
    fn run_narrow(
        cases: &[(Vec<u64>, u32, u32)],
        mode: TruncMode,
        seed: u8,
    ) -> (Vec<Vec<u64>>, comet_net::Costs) {
        let mut prg = Prg::from_seed([seed.wrapping_add(50); 16]);
        let shares: Vec<[Vec<u64>; 2]> = cases
            .iter()
            .map(|(v, _, _)| share_for_test(v, &mut prg))
            .collect();
        let d = dealer(seed);
        let (r0, r1) = run_pair(&d, |p| {
            let i = p.id.index();
            let parts: Vec<(&[u64], u32, u32)> = cases
                .iter()
                .zip(&shares)
                .map(|((_, s, l), sh)| (&sh[i][..], *s, *l))
                .collect();
            let out = truncate_many_narrow_with(p, &parts, mode)?;
            Ok((out, p.online_meter().total()))
        });
        let (y0, costs) = r0.unwrap();
        let (y1, _) = r1.unwrap();
        (
            y0.iter().zip(&y1).map(|(a, b)| reconstruct(a, b)).collect(),
            costs,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn narrow_truncation_matches_the_ideal_functionality(
            width in 3u32..=64,
            raw in proptest::collection::vec(any::<i64>(), 1..40),
            shift_seed in any::<u32>(),
            seed in any::<u8>(),
        ) {
            let shift = 1 + shift_seed % (width - 2);
            let limit = 1i128 << (width - 2);
            // Map arbitrary i64s into [−2^(L−2), 2^(L−2)).
            let values: Vec<u64> = raw
                .iter()
                .map(|&v| ((v as i128).rem_euclid(2 * limit) - limit) as i64 as u64)
                .collect();
            let (exact, _) = run_narrow(&[(values.clone(), shift, width)], TruncMode::Exact, seed);
            let (faithful, _) = run_narrow(&[(values.clone(), shift, width)], TruncMode::Faithful, seed);
            for i in 0..values.len() {
                let floor = floor_shift(values[i], shift);
                prop_assert_eq!(exact[0][i], floor);
                prop_assert!(faithful[0][i].wrapping_sub(floor) <= 1);
            }
        }
    }

    #[test]
    fn narrow_truncation_matches_the_ideal_functionality_at_many_widths() {
        let mut prg = Prg::from_seed([21; 16]);
        let mut cases = Vec::new();
        for width in [3, 4, 8, 13, 16, 24, 33, 36, 40, 45, 48, 56, 63, 64] {
            let mut shifts = vec![1, width - 2, (width / 2).max(1)];
            shifts.extend([12, 24, 26].iter().filter(|&&s| s <= width - 2));
            for s in shifts {
                cases.push((narrow_values(&mut prg, width, 300), s, width));
            }
        }
        for mode in [TruncMode::Exact, TruncMode::Faithful] {
            let (got, costs) = run_narrow(&cases, mode, 22);
            let mut rounded_up = 0;
            for ((values, s, l), out) in cases.iter().zip(&got) {
                for (x, y) in values.iter().zip(out) {
                    let diff = y.wrapping_sub(floor_shift(*x, *s));
                    match mode {
                        TruncMode::Exact => {
                            assert_eq!(diff, 0, "x = {}, shift {s}, width {l}", *x as i64)
                        }
                        TruncMode::Faithful => assert!(
                            diff <= 1,
                            "x = {}, shift {s}, width {l}: off by {}",
                            *x as i64,
                            diff as i64
                        ),
                    }
                    rounded_up += diff as usize;
                }
            }
            if mode == TruncMode::Faithful {
                assert!(rounded_up > 1000, "only {rounded_up} rounded up");
            }
            assert_eq!(costs.rounds, 1, "every width in one round");
        }
    }

    #[test]
    fn narrow_truncation_sends_l_bits_per_element() {
        let mut prg = Prg::from_seed([23; 16]);
        let n = 1000;
        let full = run_narrow(
            &[(narrow_values(&mut prg, 64, n), 12, 64)],
            TruncMode::Faithful,
            24,
        )
        .1;
        assert_eq!(
            full.bytes_sent as usize,
            5 + 8 * n,
            "the full-width cost is unchanged"
        );
        for width in [16, 24, 40, 48, 56] {
            let (_, costs) = run_narrow(
                &[(narrow_values(&mut prg, width, n), 12, width)],
                TruncMode::Faithful,
                25,
            );
            assert_eq!(
                costs.bytes_sent as usize,
                5 + (width as usize / 8) * n,
                "width {width}"
            );
            println!(
                "narrow truncation width {width}: {} bytes sent per element (64-bit: 8)",
                (costs.bytes_sent - 5) as f64 / n as f64
            );
        }
        // Two widths in one round: one packed vector per run of equal widths.
        let (_, mixed) = run_narrow(
            &[
                (narrow_values(&mut prg, 40, n), 12, 40),
                (narrow_values(&mut prg, 40, n), 24, 40),
                (narrow_values(&mut prg, 56, n), 24, 56),
            ],
            TruncMode::Faithful,
            26,
        );
        assert_eq!(mixed.rounds, 1);
        assert_eq!(mixed.bytes_sent as usize, 5 + 2 * 5 + 2 * n * 5 + n * 7);
    }

    #[test]
    fn narrow_truncation_rejects_bad_widths_and_shifts() {
        for (s, l) in [(1, 2), (31, 32), (1, 65), (63, 64)] {
            let d = dealer(27);
            let (r0, _) = run_pair(&d, |p| truncate_many_narrow(p, &[(&[1u64, 2][..], s, l)]));
            assert!(
                matches!(r0, Err(ProtocolError::Range(_))),
                "shift {s} width {l}"
            );
        }
    }

    #[test]
    fn zero_shift_and_empty_parts_pass_through_without_traffic() {
        let d = dealer(3);
        let (r0, r1) = run_pair(&d, |p| {
            let out = truncate_many(p, &[(&[5, 6][..], 0), (&[][..], 12)])?;
            Ok((out, p.online_meter().total().rounds))
        });
        let (o0, rounds) = r0.unwrap();
        assert_eq!(o0, vec![vec![5, 6], vec![]]);
        assert_eq!(rounds, 0);
        assert_eq!(r1.unwrap().0, vec![vec![5, 6], vec![]]);
    }

    #[test]
    fn mixed_parts_keep_their_order() {
        let mut prg = Prg::from_seed([4; 16]);
        let a = test_values(&mut prg, 30);
        let b = test_values(&mut prg, 17);
        let (sa, sb) = (share_for_test(&a, &mut prg), share_for_test(&b, &mut prg));
        let d = dealer(4);
        let (r0, r1) = run_pair(&d, |p| {
            let i = p.id.index();
            truncate_many(p, &[(&sa[i], 12), (&sb[i], 0), (&sb[i], 40)])
        });
        let (y0, y1) = (r0.unwrap(), r1.unwrap());
        assert_eq!(
            reconstruct(&y0[0], &y1[0]),
            a.iter().map(|&x| floor_shift(x, 12)).collect::<Vec<_>>()
        );
        assert_eq!(reconstruct(&y0[1], &y1[1]), b);
        assert_eq!(
            reconstruct(&y0[2], &y1[2]),
            b.iter().map(|&x| floor_shift(x, 40)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn fixed_point_products_match_plaintext() {
        let fp = comet_core::FixedPoint::default();
        let f = fp.frac_bits;
        let mut prg = Prg::from_seed([5; 16]);
        let n = 500;
        // Reals up to ±2^16 (products up to 2^56 < 2^62 at 2f bits), plus zeros and negatives.
        let reals = |prg: &mut Prg| -> Vec<f64> {
            (0..n)
                .map(|i| {
                    if i % 50 == 0 {
                        0.0
                    } else {
                        ((prg.next_u64() >> 11) as f64 / 2f64.powi(53) - 0.5) * 2f64.powi(17)
                    }
                })
                .collect()
        };
        let (x, y) = (
            fp.encode_vec(&reals(&mut prg)),
            fp.encode_vec(&reals(&mut prg)),
        );
        let (xs, ys) = (share_for_test(&x, &mut prg), share_for_test(&y, &mut prg));
        let c = -3.7183;
        let d = dealer(5);
        let (r0, r1) = run_pair(&d, |p| {
            let i = p.id.index();
            let before = p.online_meter().total();
            let prod = mul_fixed(p, &xs[i], &ys[i])?;
            let after_mul = p.online_meter().total();
            let faithful = mul_fixed_faithful(p, &xs[i], &ys[i])?;
            let scaled = scale_public(p, &xs[i], c)?;
            let after_scale = p.online_meter().total();
            Ok((
                prod,
                faithful,
                scaled,
                after_mul.since(&before).rounds,
                after_scale.since(&after_mul).rounds,
            ))
        });
        let (p0, fa0, s0, mul_rounds, rest_rounds) = r0.unwrap();
        let (p1, fa1, s1, _, _) = r1.unwrap();
        assert_eq!(mul_rounds, 2, "Beaver product + truncation");
        assert_eq!(rest_rounds, 3, "faithful product (2) + scale_public (1)");
        let c_enc = fp.encode(c) as i64 as i128;
        for i in 0..n {
            let exact = ((x[i] as i64 as i128 * y[i] as i64 as i128) >> f) as i64 as u64;
            assert_eq!(p0[i].wrapping_add(p1[i]), exact);
            assert!(fa0[i].wrapping_add(fa1[i]).wrapping_sub(exact) <= 1);
            let scaled = ((x[i] as i64 as i128 * c_enc) >> f) as i64 as u64;
            assert_eq!(s0[i].wrapping_add(s1[i]), scaled);
        }
    }

    #[test]
    fn several_products_truncate_in_two_rounds() {
        let mut prg = Prg::from_seed([11; 16]);
        let values = FixedPointValues::new(&mut prg, 300);
        let (xs, ys) = (
            share_for_test(&values.a, &mut prg),
            share_for_test(&values.b, &mut prg),
        );
        let d = dealer(11);
        let (r0, r1) = run_pair(&d, |p| {
            let i = p.id.index();
            let (x, y) = (&xs[i], &ys[i]);
            let parts = [
                (&x[..100], &y[..100], 12),
                (&x[100..], &y[100..], 24),
                (&x[..0], &y[..0], 5),
            ];
            let out = mul_truncate_many(p, &parts, TruncMode::Exact)?;
            let empty = mul_fixed(p, &[], &[])?;
            Ok((out, empty, p.online_meter().total().rounds))
        });
        let (o0, e0, rounds) = r0.unwrap();
        let (o1, _, _) = r1.unwrap();
        assert_eq!(rounds, 2);
        assert!(e0.is_empty() && o0[2].is_empty());
        let (a, b) = (&values.a, &values.b);
        let expect =
            |i: usize, s: u32| ((a[i] as i64 as i128 * b[i] as i64 as i128) >> s) as i64 as u64;
        let got0 = reconstruct(&o0[0], &o1[0]);
        let got1 = reconstruct(&o0[1], &o1[1]);
        assert!((0..100).all(|i| got0[i] == expect(i, 12)));
        assert!((100..300).all(|i| got1[i - 100] == expect(i, 24)));
    }

    #[test]
    fn bad_inputs_are_clear_errors_on_both_servers() {
        let d = dealer(6);
        let (r0, r1) = run_pair(&d, |p| truncate(p, &[1, 2, 3], 63));
        assert!(matches!(r0, Err(ProtocolError::Range(_))));
        assert!(matches!(r1, Err(ProtocolError::Range(_))));
        let (r0, r1) = run_pair(&d, |p| mul_fixed(p, &[1, 2, 3], &[1, 2]));
        assert!(matches!(r0, Err(ProtocolError::Shape(_))));
        assert!(matches!(r1, Err(ProtocolError::Shape(_))));
        let (r0, r1) = run_pair(&d, |p| scale_public(p, &[1], f64::NAN));
        assert!(matches!(r0, Err(ProtocolError::Range(_))));
        assert!(matches!(r1, Err(ProtocolError::Range(_))));
        let (r0, r1) = run_pair(&d, |p| scale_public(p, &[1], 1e300));
        assert!(matches!(r0, Err(ProtocolError::Range(_))));
        assert!(matches!(r1, Err(ProtocolError::Range(_))));
    }

    /// Prints the costs of each operation for n = 576 and 1536 (`--nocapture`) and checks
    /// the online bytes against the formula of the module documentation.
    #[test]
    fn cost_report() {
        for n in [576usize, 1536] {
            let mut prg = Prg::from_seed([10; 16]);
            let x = FixedPointValues::new(&mut prg, n);
            let (xs, ys) = (
                share_for_test(&x.a, &mut prg),
                share_for_test(&x.b, &mut prg),
            );
            let d = dealer(10);
            let (r0, r1) = run_pair(&d, |p| {
                let i = p.id.index();
                let mut rows = Vec::new();
                let mut measure =
                    |p: &mut Party,
                     name: &str,
                     op: &dyn Fn(&mut Party) -> Result<(), ProtocolError>| {
                        let (on, off) = (p.online_meter().total(), p.offline_meter().total());
                        op(p)?;
                        rows.push((
                            name.to_string(),
                            p.online_meter().total().since(&on),
                            p.offline_meter().total().since(&off),
                        ));
                        Ok::<_, ProtocolError>(())
                    };
                measure(p, "truncate", &|p| truncate(p, &xs[i], 12).map(drop))?;
                measure(p, "truncate_faithful", &|p| {
                    truncate_faithful(p, &xs[i], 12).map(drop)
                })?;
                measure(p, "mul_fixed", &|p| mul_fixed(p, &xs[i], &ys[i]).map(drop))?;
                measure(p, "mul_fixed_faithful", &|p| {
                    mul_fixed_faithful(p, &xs[i], &ys[i]).map(drop)
                })?;
                measure(p, "scale_public", &|p| {
                    scale_public(p, &xs[i], 0.125).map(drop)
                })?;
                measure(p, "shuffle", &|p| {
                    crate::shuffle::shuffle(p, &xs[i]).map(drop)
                })?;
                // Only the low bit of each share is used: a valid sharing of a 0/1 vector.
                measure(p, "open_shuffled_bits", &|p| {
                    crate::shuffle::open_shuffled_bits(p, &xs[i]).map(drop)
                })?;
                Ok(rows)
            });
            let (rows0, rows1) = (r0.unwrap(), r1.unwrap());
            for ((name, on0, off0), (_, on1, off1)) in rows0.iter().zip(&rows1) {
                println!(
                    "n = {n:5} {name:20} online sent P0/P1 {:7}/{:7} B, rounds P0/P1 {}/{}; offline received P0/P1 {:8}/{:8} B",
                    on0.bytes_sent, on1.bytes_sent, on0.rounds, on1.rounds, off0.bytes_received, off1.bytes_received
                );
            }
            let truncate_online = rows0[0].1.bytes_sent as usize;
            assert_eq!(truncate_online, 5 + 8 * n);
            assert_eq!(
                rows0[2].1.bytes_sent as usize,
                2 * 5 + 5 + 5 + 16 * n + 8 * n
            );
            assert_eq!(rows0[2].1.rounds, 2);
        }
    }

    /// Two vectors of fixed-point values whose products stay in range.
    struct FixedPointValues {
        a: Vec<u64>,
        b: Vec<u64>,
    }

    impl FixedPointValues {
        fn new(prg: &mut Prg, n: usize) -> Self {
            let fp = comet_core::FixedPoint::default();
            let mut gen = || {
                (0..n)
                    .map(|_| {
                        fp.encode(((prg.next_u64() >> 11) as f64 / 2f64.powi(53) - 0.5) * 200.0)
                    })
                    .collect()
            };
            FixedPointValues { a: gen(), b: gen() }
        }
    }

    #[test]
    fn reduce_bits_shares_the_low_bits() {
        let mut prg = Prg::from_seed([9; 16]);
        let x = prg.gen_u64s(100);
        let xs = share_for_test(&x, &mut prg);
        for bits in [1, 8, 16, 63, 64] {
            let y = reconstruct(&reduce_bits(&xs[0], bits), &reduce_bits(&xs[1], bits));
            let mask = ring::mask_bits(bits);
            assert_eq!(
                y.iter().map(|v| v & mask).collect::<Vec<_>>(),
                x.iter().map(|v| v & mask).collect::<Vec<_>>()
            );
        }
    }
}
