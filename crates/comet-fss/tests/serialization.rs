//! Key serialization: round trips, exact lengths, and errors (never panics) on bad bytes.

use comet_core::{PartyId, Prg};
use comet_fss::*;
use proptest::prelude::*;

/// Every serialized key of every kind, for a few widths.
fn all_keys() -> Vec<(&'static str, Vec<u8>)> {
    let mut prg = Prg::from_seed([20; 16]);
    let mut out = Vec::new();
    for n in [1u32, 2, 7, 8, 9, 12, 33, 63, 64] {
        let a = prg.next_u64() >> (64 - n);
        let (k0, k1) = dcf_gen(a, prg.next_u64(), n, 64, &mut prg);
        out.push(("dcf", k0.to_bytes()));
        out.push(("dcf", k1.to_bytes()));
        let (k0, _) = dcf_gen(a, 1, n, 3, &mut prg);
        out.push(("dcf", k0.to_bytes()));
        let (k0, _) = dcf_gen_vec(a, [1, 2], n, 64, &mut prg);
        out.push(("dcf2", k0.to_bytes()));
        let (k0, k1) = dpf_gen(a, n, &mut prg);
        out.push(("dpf", k0.to_bytes()));
        out.push(("dpf", k1.to_bytes()));
        let (k0, _) = drelu_gen(prg.next_u64(), n, &mut prg);
        out.push(("drelu", k0.to_bytes()));
        let (k0, _) = drelu_bit_gen(prg.next_u64(), n, &mut prg);
        out.push(("drelu_bit", k0.to_bytes()));
        let (k0, _) = relu_gen(prg.next_u64(), n, &mut prg);
        out.push(("relu", k0.to_bytes()));
        if n <= 12 {
            let (k0, _) = lut_gen(prg.next_u64(), n, &mut prg);
            out.push(("lut", k0.to_bytes()));
        }
    }
    out
}

/// Decodes `bytes` as `kind`, re-encodes, and reports the encoded_len.
fn decode(kind: &str, bytes: &[u8]) -> Result<(Vec<u8>, usize), FssError> {
    Ok(match kind {
        "dcf" => {
            let k = DcfKey::<1>::from_bytes(bytes)?;
            (k.to_bytes(), k.encoded_len())
        }
        "dcf2" => {
            let k = DcfKey::<2>::from_bytes(bytes)?;
            (k.to_bytes(), k.encoded_len())
        }
        "dpf" => {
            let k = DpfKey::from_bytes(bytes)?;
            (k.to_bytes(), k.encoded_len())
        }
        "drelu" => {
            let k = DreluKey::from_bytes(bytes)?;
            (k.to_bytes(), k.encoded_len())
        }
        "drelu_bit" => {
            let k = DreluBitKey::from_bytes(bytes)?;
            (k.to_bytes(), k.encoded_len())
        }
        "relu" => {
            let k = ReluKey::from_bytes(bytes)?;
            (k.to_bytes(), k.encoded_len())
        }
        "lut" => {
            let k = LutKey::from_bytes(bytes)?;
            (k.to_bytes(), k.encoded_len())
        }
        _ => unreachable!("unknown kind {kind}"),
    })
}

#[test]
fn static_lengths_match_generated_keys() {
    let mut prg = Prg::from_seed([23; 16]);
    for n in 1..=64u32 {
        assert_eq!(
            DpfKey::encoded_len_for(n),
            dpf_gen(0, n, &mut prg).0.to_bytes().len()
        );
        for out_bits in [1u32, 8, 37, 64] {
            let k = dcf_gen(0, 1, n, out_bits, &mut prg).0;
            assert_eq!(
                DcfKey::<1>::encoded_len_for(n, out_bits),
                k.to_bytes().len()
            );
            let k = dcf_gen_vec(0, [1, 1], n, out_bits, &mut prg).0;
            assert_eq!(
                DcfKey::<2>::encoded_len_for(n, out_bits),
                k.to_bytes().len()
            );
        }
    }
}

#[test]
fn round_trip_and_encoded_len() {
    for (kind, bytes) in all_keys() {
        let (again, len) = decode(kind, &bytes).unwrap();
        assert_eq!(again, bytes, "{kind}");
        assert_eq!(len, bytes.len(), "{kind}");
    }
}

#[test]
fn decoded_keys_evaluate_like_the_originals() {
    let mut prg = Prg::from_seed([21; 16]);
    let n = 45;
    let alpha = prg.next_u64() >> 19;
    let (d0, d1) = dcf_gen(alpha, 99, n, 64, &mut prg);
    let d0 = DcfKey::<1>::from_bytes(&d0.to_bytes()).unwrap();
    let d1 = DcfKey::<1>::from_bytes(&d1.to_bytes()).unwrap();
    let (p0, p1) = dpf_gen(alpha, n, &mut prg);
    let p0 = DpfKey::from_bytes(&p0.to_bytes()).unwrap();
    let p1 = DpfKey::from_bytes(&p1.to_bytes()).unwrap();
    for x in [0, alpha - 1, alpha, alpha + 1, (1 << n) - 1] {
        let s = dcf_eval(PartyId::P0, &d0, x).wrapping_add(dcf_eval(PartyId::P1, &d1, x));
        assert_eq!(s, if x < alpha { 99 } else { 0 });
        assert_eq!(
            dpf_lt(PartyId::P0, &p0, x) ^ dpf_lt(PartyId::P1, &p1, x),
            (x < alpha) as u8
        );
    }
}

#[test]
fn every_truncation_and_extension_is_an_error() {
    for (kind, bytes) in all_keys() {
        for len in 0..bytes.len() {
            assert!(
                decode(kind, &bytes[..len]).is_err(),
                "{kind} truncated to {len}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            decode(kind, &longer).is_err(),
            "{kind} with a trailing byte"
        );
    }
}

#[test]
fn header_corruption_is_an_error() {
    for (kind, bytes) in all_keys() {
        // Wrong tag.
        let mut b = bytes.clone();
        b[0] ^= 0x40;
        assert!(
            matches!(decode(kind, &b), Err(FssError::WrongTag { .. })),
            "{kind}"
        );
        // Width byte out of range.
        for bad in [0u8, 65, 200] {
            let mut b = bytes.clone();
            b[1] = bad;
            assert!(
                matches!(decode(kind, &b), Err(FssError::InvalidParameter { .. })),
                "{kind} width {bad}"
            );
        }
        // A neighbouring width changes the body length, except for tiny truth tables whose
        // padding absorbs it (1- and 2-bit DPF tables both fit one byte): then it must at
        // least decode without a panic.
        for bad in [bytes[1].wrapping_add(1), bytes[1].wrapping_sub(1)] {
            let mut b = bytes.clone();
            b[1] = bad;
            let tiny_table = kind == "dpf" && bytes[1] <= 3;
            assert!(
                decode(kind, &b).is_err() || tiny_table,
                "{kind} width {bad}"
            );
        }
    }
}

#[test]
fn padding_bits_are_checked() {
    // DPF bodies of n = 10 (641 bits) and 12 (899 bits) end in padding; n = 3 (an 8-bit
    // table) and n = 9 (512 bits) do not.
    let mut prg = Prg::from_seed([22; 16]);
    for n in [10u32, 12, 3, 9] {
        let (k, _) = dpf_gen(1, n, &mut prg);
        let mut b = k.to_bytes();
        let last = b.len() - 1;
        b[last] |= 0x80;
        if n == 3 || n == 9 {
            assert!(DpfKey::from_bytes(&b).is_ok());
        } else {
            assert_eq!(
                DpfKey::from_bytes(&b),
                Err(FssError::NonZeroPadding { what: "DPF key" })
            );
        }
    }
    let (k, _) = dcf_gen(5, 1, 12, 3, &mut prg);
    let mut b = k.to_bytes();
    let last = b.len() - 1;
    b[last] |= 0x80;
    assert!(DcfKey::<1>::from_bytes(&b).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400), tag in 0usize..8) {
        let mut bytes = bytes;
        if let Some(first) = bytes.first_mut() {
            *first = [0xC1, 0xC2, 0xD0, 0xE1, 0xE2, 0xE3, 0xE4, 0x00][tag];
        }
        for kind in ["dcf", "dcf2", "dpf", "drelu", "drelu_bit", "relu", "lut"] {
            let _ = decode(kind, &bytes);
        }
    }

    #[test]
    fn flipped_bytes_never_panic(which in 0usize..60, pos in any::<usize>(), bit in 0u8..8) {
        let keys = all_keys();
        let (kind, bytes) = &keys[which % keys.len()];
        let mut b = bytes.clone();
        let p = pos % b.len();
        b[p] ^= 1 << bit;
        let _ = decode(kind, &b);
    }
}
