//! Every kernel this CPU supports, on both `B` layouts and both output modes, against the
//! naive reference.

use super::*;
use crate::Prg;
use proptest::prelude::*;

/// Edge sizes around the register-tile and SIMD widths.
const EDGE_SIZES: [usize; 12] = [1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65];

/// Interesting ring values: extremes, the 32-bit split points, small numbers.
const SPECIAL: [u64; 8] = [
    0,
    1,
    2,
    u64::MAX,
    u64::MAX - 1,
    1 << 63,
    (1 << 32) - 1,
    1 << 32,
];

fn random(prg: &mut Prg, len: usize) -> Vec<u64> {
    prg.gen_u64s(len)
}

/// Random values where about half are drawn from [`SPECIAL`].
fn random_special(prg: &mut Prg, len: usize) -> Vec<u64> {
    (0..len)
        .map(|_| {
            let r = prg.next_u64();
            if r & 1 == 0 {
                SPECIAL[(r >> 1) as usize % SPECIAL.len()]
            } else {
                prg.next_u64()
            }
        })
        .collect()
}

fn transpose(b: &[u64], rows: usize, cols: usize) -> Vec<u64> {
    let mut t = vec![0u64; b.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = b[r * cols + c];
        }
    }
    t
}

fn fast_kernels() -> Vec<Kernel> {
    Kernel::supported()
        .into_iter()
        .filter(|&k| k != Kernel::Naive)
        .collect()
}

/// Checks every supported kernel, row-major and transposed `B`, overwrite and accumulate.
fn check_all_kernels(a: &[u64], b: &[u64], m: usize, k: usize, n: usize, prg: &mut Prg) {
    let expected = matmul_naive(a, b, m, k, n);
    let bt = transpose(b, k, n);
    let dims = Dims { m, k, n };
    let init = random(prg, m * n);
    let expected_acc: Vec<u64> = init
        .iter()
        .zip(&expected)
        .map(|(x, y)| x.wrapping_add(*y))
        .collect();
    for kernel in Kernel::supported() {
        let got = matmul_with(kernel, a, b, m, k, n).unwrap();
        assert_eq!(got, expected, "{kernel:?} row-major {m}x{k}x{n}");
        let got = matmul_transposed_b_with(kernel, a, &bt, m, k, n).unwrap();
        assert_eq!(got, expected, "{kernel:?} transposed {m}x{k}x{n}");
        for layout in [BLayout::RowMajor, BLayout::Transposed] {
            let rhs = if layout == BLayout::RowMajor { b } else { &bt };
            let mut out = init.clone();
            matmul_general(
                kernel,
                a,
                rhs,
                layout,
                dims,
                &mut out,
                OutputMode::Accumulate,
            )
            .unwrap();
            assert_eq!(
                out, expected_acc,
                "{kernel:?} {layout:?} accumulate {m}x{k}x{n}"
            );
            let mut out = init.clone();
            matmul_general(
                kernel,
                a,
                rhs,
                layout,
                dims,
                &mut out,
                OutputMode::Overwrite,
            )
            .unwrap();
            assert_eq!(out, expected, "{kernel:?} {layout:?} overwrite {m}x{k}x{n}");
        }
    }
}

#[test]
fn naive_matches_hand_computed_product() {
    // [1 2; 3 4] · [5 6; 7 8] = [19 22; 43 50], and (-1)·(-1) = 1 in the ring.
    assert_eq!(
        matmul_naive(&[1, 2, 3, 4], &[5, 6, 7, 8], 2, 2, 2),
        vec![19, 22, 43, 50]
    );
    assert_eq!(matmul_naive(&[u64::MAX], &[u64::MAX], 1, 1, 1), vec![1]);
    assert_eq!(matmul_naive(&[1 << 32], &[1 << 32], 1, 1, 1), vec![0]);
}

#[test]
fn all_kernels_match_naive_on_edge_shapes() {
    let mut prg = Prg::from_seed([7; 16]);
    for &m in &EDGE_SIZES {
        for &k in &EDGE_SIZES {
            for &n in &EDGE_SIZES {
                let a = random_special(&mut prg, m * k);
                let b = random_special(&mut prg, k * n);
                check_all_kernels(&a, &b, m, k, n, &mut prg);
            }
        }
    }
}

#[test]
fn all_kernels_match_naive_across_block_boundaries() {
    // k beyond several KC blocks, m beyond MC, n beyond NC and not a multiple of any NR.
    let shapes = [
        (9, 300, 130),
        (130, 129, 97),
        (5, 257, 200),
        (1, 1000, 33),
        (4, 513, 101),
        (70, 64, 250),
    ];
    let mut prg = Prg::from_seed([8; 16]);
    for (m, k, n) in shapes {
        let a = random(&mut prg, m * k);
        let b = random(&mut prg, k * n);
        check_all_kernels(&a, &b, m, k, n, &mut prg);
    }
}

#[test]
fn all_kernels_match_naive_on_model_shapes() {
    let mut prg = Prg::from_seed([9; 16]);
    for (m, k, n) in [(64, 576, 1536), (1, 576, 1536)] {
        let a = random_special(&mut prg, m * k);
        let b = random_special(&mut prg, k * n);
        check_all_kernels(&a, &b, m, k, n, &mut prg);
    }
}

#[test]
fn all_max_values_wrap_correctly() {
    // Every entry is -1, so every output entry is k·1 = k.
    for kernel in Kernel::supported() {
        for (m, k, n) in [(1, 576, 1536), (17, 65, 63), (8, 3, 24)] {
            let a = vec![u64::MAX; m * k];
            let b = vec![u64::MAX; k * n];
            let got = matmul_with(kernel, &a, &b, m, k, n).unwrap();
            assert!(got.iter().all(|&x| x == k as u64), "{kernel:?} {m}x{k}x{n}");
            let got = matmul_transposed_b_with(kernel, &a, &b, m, k, n).unwrap();
            assert!(
                got.iter().all(|&x| x == k as u64),
                "{kernel:?} T {m}x{k}x{n}"
            );
        }
    }
}

#[test]
fn default_entry_points_match_naive() {
    let mut prg = Prg::from_seed([10; 16]);
    let (m, k, n) = (33, 70, 45);
    let a = random(&mut prg, m * k);
    let b = random(&mut prg, k * n);
    let expected = matmul_naive(&a, &b, m, k, n);
    assert_eq!(matmul(&a, &b, m, k, n), expected);
    assert_eq!(
        matmul_transposed_b(&a, &transpose(&b, k, n), m, k, n),
        expected
    );
    let mut out = random(&mut prg, m * n);
    matmul_into(&a, &b, m, k, n, &mut out);
    assert_eq!(out, expected);
    matmul_acc(&a, &b, m, k, n, &mut out);
    let doubled: Vec<u64> = expected.iter().map(|x| x.wrapping_mul(2)).collect();
    assert_eq!(out, doubled);
    let bt = transpose(&b, k, n);
    let mut out = random(&mut prg, m * n);
    matmul_transposed_b_into(&a, &bt, m, k, n, &mut out);
    assert_eq!(out, expected);
    matmul_transposed_b_acc(&a, &bt, m, k, n, &mut out);
    assert_eq!(out, doubled);
}

#[test]
fn empty_dimensions_give_zero_or_empty_output() {
    for kernel in Kernel::supported() {
        assert_eq!(
            matmul_with(kernel, &[], &[0; 15], 0, 5, 3).unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(matmul_with(kernel, &[], &[], 3, 0, 2).unwrap(), vec![0; 6]);
        assert_eq!(
            matmul_with(kernel, &[0; 4], &[], 2, 2, 0).unwrap(),
            Vec::<u64>::new()
        );
        let mut out = vec![5u64; 6];
        let dims = Dims { m: 3, k: 0, n: 2 };
        matmul_general(
            kernel,
            &[],
            &[],
            BLayout::Transposed,
            dims,
            &mut out,
            OutputMode::Accumulate,
        )
        .unwrap();
        assert_eq!(out, vec![5; 6]);
    }
}

#[test]
fn detected_kernel_is_supported_and_fastest() {
    let detected = detected_kernel();
    assert!(detected.is_supported());
    assert_ne!(detected, Kernel::Naive);
    assert_eq!(Some(&detected), Kernel::supported().last());
}

#[test]
fn unsupported_kernels_are_refused() {
    for kernel in Kernel::ALL {
        let result = matmul_with(kernel, &[1], &[1], 1, 1, 1);
        if kernel.is_supported() {
            assert_eq!(result, Ok(vec![1]));
        } else {
            assert_eq!(result, Err(MatmulError::UnsupportedKernel(kernel)));
        }
    }
}

#[test]
fn shape_mismatches_are_errors() {
    let kernel = detected_kernel();
    let err = matmul_with(kernel, &[1, 2, 3], &[1, 2], 2, 2, 1).unwrap_err();
    assert!(matches!(
        err,
        MatmulError::ShapeMismatch {
            operand: "A",
            len: 3,
            ..
        }
    ));
    let err = matmul_transposed_b_with(kernel, &[1, 2], &[1, 2, 3], 1, 2, 2).unwrap_err();
    assert!(matches!(
        err,
        MatmulError::ShapeMismatch {
            operand: "Bᵀ", ..
        }
    ));
    let mut out = vec![0u64; 3];
    let dims = Dims { m: 2, k: 1, n: 2 };
    let err = matmul_general(
        kernel,
        &[1, 2],
        &[3, 4],
        BLayout::RowMajor,
        dims,
        &mut out,
        OutputMode::Overwrite,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        MatmulError::ShapeMismatch { operand: "out", .. }
    ));
    assert!(err.to_string().contains("out has 3 elements, expected 2x2"));
    let err = matmul_with(kernel, &[], &[], usize::MAX, 2, 1).unwrap_err();
    assert!(matches!(err, MatmulError::TooLarge { .. }));
}

#[test]
#[should_panic(expected = "B has 3 elements")]
fn matmul_panics_on_bad_shape() {
    matmul(&[1, 2], &[1, 2, 3], 1, 2, 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn proptest_kernels_match_naive(
        m in 1usize..40,
        k in 1usize..40,
        n in 1usize..60,
        seed in any::<[u8; 16]>(),
    ) {
        let mut prg = Prg::from_seed(seed);
        let a = random_special(&mut prg, m * k);
        let b = random_special(&mut prg, k * n);
        let expected = matmul_naive(&a, &b, m, k, n);
        let bt = transpose(&b, k, n);
        for kernel in fast_kernels() {
            prop_assert_eq!(&matmul_with(kernel, &a, &b, m, k, n).unwrap(), &expected);
            prop_assert_eq!(&matmul_transposed_b_with(kernel, &a, &bt, m, k, n).unwrap(), &expected);
        }
    }
}
