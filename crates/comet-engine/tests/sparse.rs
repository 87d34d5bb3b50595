//! The sparse FFN (DESIGN.md §7) on a tiny random llama model: all-keep equals dense, the
//! output equals the plaintext model with the same neurons masked, and the servers' opened
//! positions do not depend on which neurons are active.

mod common;

use comet_core::share::share;
use comet_core::{FixedPoint, Prg};
use comet_dealer::kinds::sparse::{PermutedFfn, PermutedFfnParams, PlainFfn};
use comet_dealer::{Dealer, InProcessDealer};
use comet_engine::local::{capacity_for, generate};
use comet_engine::sparse::{FfnMode, SparseFfn, SparseGate};
use comet_engine::LocalDeployment;
use comet_model::sparsity::{Quantizer, SelfGateLayer, SELF_GATE_VERSION};
use comet_model::{Model, Sampler, SamplingParams, SelfGate};
use comet_net::NetProfile;
use comet_protocols::sparse::{self_gate, SelfGateTable};
use comet_protocols::testing::run_pair;
use common::{assert_close, deployment, tiny_model};
use std::sync::Arc;

fn sparse_deployment(model: &Model, seed: u8) -> LocalDeployment {
    let mut dep = deployment(model, seed);
    dep.enable_sparse(model).unwrap();
    dep
}

/// A self-gate over the whole range of the tiny model's values with a given threshold.
fn gate_with_threshold(model: &Model, bits: u32, threshold: f64) -> SelfGate {
    let layer = SelfGateLayer {
        gate: Quantizer::covering(8.0, bits, 12).unwrap(),
        up: Quantizer::covering(8.0, bits, 12).unwrap(),
        threshold,
    };
    SelfGate {
        version: SELF_GATE_VERSION,
        model_sha256: "tiny".into(),
        frac_bits: 12,
        bits,
        sparsity: 0.5,
        layers: vec![layer; model.config().n_layers],
    }
}

fn greedy(dep: &mut LocalDeployment, mode: FfnMode, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut session = dep
        .session_with(capacity_for(prompt.len(), n), NetProfile::none(), mode)
        .unwrap();
    let mut sampler = Sampler::new(SamplingParams::default());
    let out = generate(
        session.client(),
        prompt,
        n,
        &mut sampler,
        &[],
        "none",
        |_| Ok(()),
    )
    .unwrap();
    session.finish().unwrap();
    out.tokens
}

#[test]
fn sparse_with_every_neuron_kept_equals_dense() {
    let (_dir, model) = tiny_model(7);
    let mut dep = sparse_deployment(&model, 2);
    let c = model.config();
    let rows = |bits: u32| vec![u64::MAX >> (64 - (1u32 << bits).min(64)); 1 << bits];
    let all = SparseFfn {
        sparsity: 0.0,
        repermute_every: None,
        gate: SparseGate::SelfGate(
            (0..c.n_layers)
                .map(|_| SelfGateTable {
                    bits: 4,
                    gate_mult: 1,
                    gate_shift: 20,
                    up_mult: 1,
                    up_shift: 20,
                    rows: rows(4),
                })
                .collect(),
        ),
    };
    let prompt = [3u32, 14, 15, 9];
    let mut sampler = Sampler::new(SamplingParams::default());
    let (plain, _) =
        comet_model::generate(&model, &prompt, 5, &mut sampler, &[], |_| Ok(())).unwrap();
    let sparse = greedy(&mut dep, FfnMode::Sparse(Arc::new(all)), &prompt, 5);
    assert_eq!(sparse, plain);
}

#[test]
fn a_gate_file_for_another_fixed_point_or_width_is_refused() {
    let (_dir, model) = tiny_model(7);
    let mut gate = gate_with_threshold(&model, 5, 0.1);
    assert!(SparseFfn::from_self_gate(&gate, model.config(), FixedPoint::new(12)).is_ok());
    let e = SparseFfn::from_self_gate(&gate, model.config(), FixedPoint::new(16)).unwrap_err();
    assert!(e.to_string().contains("fractional bits"), "{e}");
    gate.layers.pop();
    assert!(SparseFfn::from_self_gate(&gate, model.config(), FixedPoint::new(12)).is_err());
}

#[test]
fn sparse_session_reports_active_counts_and_setup_bytes() {
    let (_dir, model) = tiny_model(7);
    let mut dep = sparse_deployment(&model, 5);
    let gate = gate_with_threshold(&model, 6, 0.05);
    let sparse = SparseFfn::from_self_gate(&gate, model.config(), FixedPoint::new(12)).unwrap();
    let mut session = dep
        .session_with(8, NetProfile::none(), FfnMode::Sparse(Arc::new(sparse)))
        .unwrap();
    let first = session.client().step(&[1, 2, 3], false).unwrap();
    let second = session.client().step(&[4], false).unwrap();
    let summaries = session.finish().unwrap();
    let c = model.config();
    assert_eq!(first.costs.ffn_active.len(), c.n_layers);
    assert!(first.costs.setup_offline_bytes > (3 * c.d_model * c.ffn_dim * 8 * c.n_layers) as u64);
    assert_eq!(second.costs.setup_offline_bytes, 0);
    // What the servers learned is exactly the opened bits; the counts match them.
    let masks = &summaries[0].ffn_masks;
    assert_eq!(masks.len(), 2);
    assert_eq!(masks, &summaries[1].ffn_masks);
    for (step, costs) in masks.iter().zip([&first.costs, &second.costs]) {
        for (l, bits) in step.iter().enumerate() {
            assert_eq!(
                bits.iter().filter(|b| **b).count() as u64,
                costs.ffn_active[l]
            );
        }
    }
    let total: u64 = first.costs.ffn_active.iter().sum();
    let all = (3 * c.ffn_dim * c.n_layers) as u64;
    assert!(
        total > 0 && total < all,
        "some but not all neurons active: {total} of {all}"
    );
}

/// One neuron (index 0) is always active and every other one never is; over many sessions the
/// position where the servers see the active bit must be uniform over the layer's neurons.
#[test]
fn the_always_active_neuron_lands_on_a_uniform_position() {
    let (d, n) = (4usize, 8usize);
    let fp = FixedPoint::new(12);
    let mut gate = vec![0u64; d * n];
    let mut up = vec![0u64; d * n];
    for i in 0..d {
        gate[i * n] = fp.encode(1.0);
        up[i * n] = fp.encode(1.0);
    }
    let plain = PlainFfn {
        d,
        ffn: n,
        gate,
        up,
        down: vec![0; n * d],
        predictor: None,
    };
    let mut dealer = Dealer::with_prg(Prg::from_seed([17; 16]));
    dealer.insert_plain_ffn(0, plain);
    let dealer = InProcessDealer::new(dealer);
    // Keep when g̃ > 0 and ũ > 0 (codes of 4 bits, step 1: the active neuron has g = u = 4).
    let table = SelfGateTable {
        bits: 4,
        gate_mult: 1,
        gate_shift: 24,
        up_mult: 1,
        up_shift: 24,
        rows: (0..16u64)
            .map(|g| if (1..8).contains(&g) { 0b1111_1110 } else { 0 })
            .collect(),
    };
    let x: Vec<u64> = vec![fp.encode(1.0); d];
    let mut prg = Prg::from_seed([18; 16]);
    let trials = 400;
    let mut counts = vec![0usize; n];
    for _ in 0..trials {
        let (x0, x1) = share(&x, &mut prg);
        let xs = [x0, x1];
        let (r0, r1) = run_pair(&dealer, |p| {
            let w: PermutedFfn = p.correlation(&PermutedFfnParams { layer: 0 })?;
            let gu =
                comet_protocols::arith::matmul_fixed(p, &xs[p.id.index()], 1, &[&w.gate, &w.up])?;
            self_gate(p, &gu[0], &gu[1], &table)
        });
        let (b0, b1) = (r0.unwrap(), r1.unwrap());
        assert_eq!(b0, b1);
        let active: Vec<usize> = (0..n).filter(|&j| b0[j]).collect();
        assert_eq!(active.len(), 1, "exactly the one neuron is active: {b0:?}");
        let perm = dealer.with(|d| d.ffn_permutation(0).unwrap().to_vec());
        assert_eq!(perm[active[0]], 0, "the active position holds neuron 0");
        counts[active[0]] += 1;
    }
    // Chi-square with 7 degrees of freedom: 24.3 is the 0.1% critical value.
    let expected = trials as f64 / n as f64;
    let chi2: f64 = counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum();
    eprintln!("positions {counts:?}, chi-square {chi2:.2}");
    assert!(
        chi2 < 24.3,
        "positions are not uniform: {counts:?} (chi-square {chi2:.1})"
    );
}

/// What a masked plaintext step shows an observer: one block's activations (before masking),
/// the servers' opened bits for it and the layer's permutation.
type Observer<'o> = dyn FnMut(&comet_model::FfnActivations<'_>, &[bool], &[usize]) + 'o;

/// Runs `model` in plaintext over `steps` (token lists, one forward call each) with the FFN
/// neurons masked as the secure servers opened them (mapped back through the dealer's
/// permutations); returns the last-position logits of every step.
fn plaintext_with_masks(
    model: &Model,
    steps: &[Vec<u32>],
    masks: &[Vec<Vec<bool>>],
    perms: &[Vec<usize>],
    observe: &mut Observer<'_>,
) -> Vec<Vec<f32>> {
    let n = model.config().ffn_dim;
    let mut cache = model.new_cache();
    steps
        .iter()
        .zip(masks)
        .map(|(tokens, step_masks)| {
            let mut hook = |a: &mut comet_model::FfnActivations<'_>| {
                let (bits, perm) = (&step_masks[a.layer], &perms[a.layer]);
                observe(a, bits, perm);
                for t in 0..a.tokens {
                    for (pos, &neuron) in perm.iter().enumerate() {
                        if !bits[t * n + pos] {
                            a.hidden[t * n + neuron] = 0.0;
                        }
                    }
                }
            };
            model
                .forward_with(
                    tokens,
                    &mut cache,
                    comet_model::ForwardOptions {
                        logits: comet_model::LogitsMode::Last,
                        ffn_hook: Some(&mut hook),
                        ..Default::default()
                    },
                )
                .unwrap()
        })
        .collect()
}

/// Runs `steps` through one sparse session of 8 positions; returns the last-position logits
/// of every step, P0's opened masks and the dealer's permutation of every layer.
#[allow(clippy::type_complexity)]
fn run_sparse_steps(
    dep: &mut LocalDeployment,
    sparse: SparseFfn,
    steps: &[Vec<u32>],
) -> (Vec<Vec<f32>>, Vec<Vec<Vec<bool>>>, Vec<Vec<usize>>) {
    let layers = sparse.layers();
    let mut session = dep
        .session_with(8, NetProfile::none(), FfnMode::Sparse(Arc::new(sparse)))
        .unwrap();
    let secure = steps
        .iter()
        .map(|s| session.client().step(s, false).unwrap().logits)
        .collect();
    let mut summaries = session.finish().unwrap();
    let masks = std::mem::take(&mut summaries[0].ffn_masks);
    let perms = (0..layers)
        .map(|l| dep.ffn_permutation(l).unwrap())
        .collect();
    (secure, masks, perms)
}

#[test]
fn secure_sparse_equals_plaintext_with_the_same_masks() {
    let (_dir, model) = tiny_model(13);
    let mut dep = sparse_deployment(&model, 8);
    let gate = gate_with_threshold(&model, 6, 0.05);
    let sparse = SparseFfn::from_self_gate(&gate, model.config(), FixedPoint::new(12)).unwrap();
    let steps: Vec<Vec<u32>> = vec![vec![4, 8, 15, 16, 23], vec![42], vec![7], vec![19]];
    let (secure, masks, perms) = run_sparse_steps(&mut dep, sparse, &steps);
    let plain = plaintext_with_masks(&model, &steps, &masks, &perms, &mut |_, _, _| {});
    assert_close(&secure, &plain);
    let dense = {
        let mut cache = model.new_cache();
        steps
            .iter()
            .map(|s| model.forward(s, &mut cache).unwrap())
            .collect::<Vec<_>>()
    };
    let masked_vs_dense = plain
        .iter()
        .zip(&dense)
        .flat_map(|(p, d)| p.iter().zip(d).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f32::max);
    // The masks matter: the masked model is measurably not the dense one.
    assert!(
        masked_vs_dense > 1e-3,
        "masking changed nothing ({masked_vs_dense})"
    );
}

#[test]
fn repermuting_every_step_fetches_fresh_weights_each_step() {
    let (_dir, model) = tiny_model(7);
    let mut dep = sparse_deployment(&model, 6);
    let gate = gate_with_threshold(&model, 5, 0.05);
    let mut sparse = SparseFfn::from_self_gate(&gate, model.config(), FixedPoint::new(12)).unwrap();
    sparse.repermute_every = Some(1);
    let mut session = dep
        .session_with(6, NetProfile::none(), FfnMode::Sparse(Arc::new(sparse)))
        .unwrap();
    let mut perms = Vec::new();
    for tokens in [vec![1u32, 2], vec![3], vec![4]] {
        let step = session.client().step(&tokens, false).unwrap();
        assert!(
            step.costs.setup_offline_bytes > 0,
            "every step gets new weights"
        );
        perms.push(dep.ffn_permutation(0).unwrap());
    }
    session.finish().unwrap();
    assert!(
        perms[0] != perms[1] || perms[1] != perms[2],
        "the permutation changes"
    );
}

/// The trained-predictor gate on shares picks the neurons the plaintext predictor picks (up to
/// logits within fixed-point error of the threshold), and the secure output equals the
/// plaintext model with those neurons.
#[test]
fn secure_mlp_gate_matches_the_plaintext_predictor() {
    use comet_model::predictor::{Predictor, PredictorLayer};
    let (_dir, model) = tiny_model(19);
    let c = model.config().clone();
    let hidden = 8;
    let mut prg = Prg::from_seed([44; 16]);
    let mut uniform = |n: usize, a: f32| -> Vec<f32> {
        (0..n)
            .map(|_| ((prg.next_u64() % 2001) as f32 / 1000.0 - 1.0) * a)
            .collect()
    };
    let layers = (0..c.n_layers)
        .map(|_| PredictorLayer {
            w1: uniform(hidden * c.d_model, 0.5),
            b1: uniform(hidden, 0.2),
            w2: uniform(c.ffn_dim * hidden, 0.5),
            b2: uniform(c.ffn_dim, 0.2),
            threshold: 0.0,
        })
        .collect();
    let predictor = Predictor {
        model_sha256: "tiny".into(),
        d_model: c.d_model,
        hidden,
        ffn_dim: c.ffn_dim,
        sparsity: 0.5,
        layers,
    };
    let mut dep = LocalDeployment::share_with(
        &model,
        FixedPoint::new(12),
        Dealer::with_prg(Prg::from_seed([45; 16])),
        Prg::from_seed([46; 16]),
    )
    .unwrap();
    dep.enable_sparse_with(&model, Some(&predictor)).unwrap();
    let sparse = SparseFfn::from_predictor(&predictor, &c, FixedPoint::new(12)).unwrap();
    let steps: Vec<Vec<u32>> = vec![vec![3, 1, 4, 1, 5], vec![9], vec![2]];
    let (secure, masks, perms) = run_sparse_steps(&mut dep, sparse, &steps);
    let masks = &masks;
    // The secure decisions are the predictor's on the (masked) plaintext inputs.
    let n = c.ffn_dim;
    let (mut differ, mut near, mut total) = (0, 0, 0);
    let mut observe = |a: &comet_model::FfnActivations<'_>, bits: &[bool], perm: &[usize]| {
        let logits = predictor.logits(a.layer, a.input, a.tokens);
        for t in 0..a.tokens {
            for (pos, &j) in perm.iter().enumerate() {
                let z = logits[t * n + j] as f64;
                total += 1;
                if bits[t * n + pos] != (z > 0.0) {
                    differ += 1;
                    near += (z.abs() < 0.05) as usize;
                }
            }
        }
    };
    let plain = plaintext_with_masks(&model, &steps, masks, &perms, &mut observe);
    assert_close(&secure, &plain);
    eprintln!("MLP gate: {differ} of {total} decisions differ, {near} of them within 0.05 of the threshold");
    assert_eq!(differ, near, "every difference is a near-threshold logit");
    assert!(differ * 50 < total);
}
