//! Attention-head sparsity with KV holes (`comet_engine::heads`) on a tiny random llama model:
//! every head kept equals dense; forced group skips leave holes that later steps refill
//! inside their own rounds; the output equals the plaintext model with the same heads
//! masked, and the refilled cache equals the plaintext cache.

mod common;

use comet_core::{FixedPoint, Prg};
use comet_engine::heads::SparseHeads;
use comet_engine::sparse::SessionMode;
use comet_engine::{LocalDeployment, StepCosts};
use comet_model::heads::HeadPredictor;
use comet_model::predictor::{Predictor, PredictorLayer};
use comet_model::{AttnActivations, ForwardOptions, KvCache, LogitsMode, Model};
use comet_net::NetProfile;
use common::{assert_close, deployment, tiny_model};
use std::sync::Arc;

fn head_deployment(model: &Model, seed: u8) -> LocalDeployment {
    let mut dep = deployment(model, seed);
    dep.enable_sparse_heads(model, None).unwrap();
    dep
}

/// One session's results: per step the logits and costs, P0's head bits per step and layer,
/// the dealer's head order per layer, and both servers' final caches.
struct Run {
    logits: Vec<Vec<f32>>,
    costs: Vec<StepCosts>,
    masks: Vec<Vec<Vec<bool>>>,
    perms: Vec<Vec<usize>>,
    caches: Vec<comet_engine::kv::SecureKvCache>,
}

fn run(dep: &mut LocalDeployment, model: &Model, mode: SessionMode, steps: &[Vec<u32>]) -> Run {
    let mut session = dep.session_with(8, NetProfile::none(), mode).unwrap();
    let (mut logits, mut costs) = (Vec::new(), Vec::new());
    for s in steps {
        let r = session.client().step(s, false).unwrap();
        logits.push(r.logits);
        costs.push(r.costs);
    }
    let summaries = session.finish().unwrap();
    let perms = (0..model.config().n_layers)
        .filter_map(|l| dep.head_permutation(l))
        .collect();
    assert_eq!(summaries[0].head_masks, summaries[1].head_masks);
    Run {
        logits,
        costs,
        masks: summaries[0].head_masks.clone(),
        perms,
        caches: summaries.into_iter().map(|s| s.cache.unwrap()).collect(),
    }
}

/// The plaintext model over `steps` with the heads the servers skipped zeroed (mapped back
/// through the dealer's head order); returns the last-position logits and the cache.
fn plaintext_with_heads(
    model: &Model,
    steps: &[Vec<u32>],
    masks: &[Vec<Vec<bool>>],
    perms: &[Vec<usize>],
) -> (Vec<Vec<f32>>, KvCache) {
    let c = model.config();
    let (n, hd) = (c.n_heads, c.head_dim);
    let mut cache = model.new_cache();
    let logits = steps
        .iter()
        .zip(masks)
        .map(|(tokens, step_masks)| {
            let mut hook = |a: &mut AttnActivations<'_>| {
                let (bits, perm) = (&step_masks[a.layer], &perms[a.layer]);
                for t in 0..a.tokens {
                    for (pos, &head) in perm.iter().enumerate() {
                        if !bits[t * n + pos] {
                            a.heads[t * n * hd + head * hd..t * n * hd + (head + 1) * hd].fill(0.0);
                        }
                    }
                }
            };
            let options = ForwardOptions {
                logits: LogitsMode::Last,
                attn_hook: Some(&mut hook),
                ..Default::default()
            };
            model.forward_with(tokens, &mut cache, options).unwrap()
        })
        .collect();
    (logits, cache)
}

fn steps() -> Vec<Vec<u32>> {
    vec![vec![4, 8, 15, 16], vec![23], vec![42], vec![7]]
}

#[test]
fn every_head_kept_equals_dense_with_the_same_rounds_and_bytes() {
    let (_dir, model) = tiny_model(11);
    let mut dep = head_deployment(&model, 3);
    let keep_all = SparseHeads::default();
    let mode = SessionMode {
        heads: Some(Arc::new(keep_all)),
        ..Default::default()
    };
    let sparse = run(&mut dep, &model, mode, &steps());
    let dense = run(&mut dep, &model, SessionMode::default(), &steps());
    let plain: Vec<Vec<f32>> = {
        let mut cache = model.new_cache();
        steps()
            .iter()
            .map(|s| model.forward(s, &mut cache).unwrap())
            .collect()
    };
    assert_close(&sparse.logits, &plain);
    assert_close(&dense.logits, &plain);
    for (s, d) in sparse.costs.iter().zip(&dense.costs) {
        assert_eq!(s.rounds, d.rounds);
        assert_eq!(s.online_bytes, d.online_bytes);
        assert_eq!((s.kv_holes, s.kv_refilled), (0, 0));
        let c = model.config();
        let all = (s.tokens * c.n_heads) as u64;
        assert_eq!(s.attn_active, vec![all; c.n_layers]);
    }
    assert!(sparse.costs[0].setup_offline_bytes > 0);
}

#[test]
fn forced_holes_are_refilled_in_the_steps_own_rounds_and_match_plaintext() {
    let (_dir, model) = tiny_model(12);
    let c = model.config().clone();
    let mut dep = head_deployment(&model, 5);
    let mode = SessionMode {
        heads: Some(Arc::new(SparseHeads::forced(2))),
        ..Default::default()
    };
    let steps = steps();
    let sparse = run(&mut dep, &model, mode, &steps);
    let dense = run(&mut dep, &model, SessionMode::default(), &steps);

    // Step 0 (4 prompt rows) and step 2 skip one group per layer: its rows become holes;
    // steps 1 and 3 run every head and refill all of them.
    let group = c.n_heads / c.n_kv_heads;
    let layers = c.n_layers as u64;
    let holes: Vec<(u64, u64)> = sparse
        .costs
        .iter()
        .map(|s| (s.kv_holes, s.kv_refilled))
        .collect();
    assert_eq!(
        holes,
        vec![(4 * layers, 0), (0, 4 * layers), (layers, 0), (0, layers)]
    );
    for (step, s) in sparse.costs.iter().enumerate() {
        let skipped = if step % 2 == 0 { group } else { 0 };
        let expect = (s.tokens * (c.n_heads - skipped)) as u64;
        assert_eq!(s.attn_active, vec![expect; c.n_layers], "step {step}");
    }
    // Refilling 4 holes per layer or 1 costs no round: every decode step has dense's rounds.
    for step in 1..4 {
        assert_eq!(
            sparse.costs[step].rounds, dense.costs[step].rounds,
            "step {step}"
        );
    }
    // A step with holes sends less; its refill step sends more than dense (the deferred rows).
    assert!(sparse.costs[2].online_bytes < dense.costs[2].online_bytes);
    assert!(sparse.costs[3].online_bytes > dense.costs[3].online_bytes);

    // The output equals the plaintext model with the same heads masked.
    let (plain, plain_cache) = plaintext_with_heads(&model, &steps, &sparse.masks, &sparse.perms);
    assert_close(&sparse.logits, &plain);
    let masked_vs_dense = plain
        .iter()
        .zip(&dense.logits)
        .flat_map(|(p, d)| p.iter().zip(d).map(|(a, b)| (a - b).abs()))
        .fold(0.0, f32::max);
    assert!(
        masked_vs_dense > 1e-3,
        "the skipped heads changed the output"
    );

    // After the last refill the secure cache holds every row, equal to the plaintext cache.
    let fp = FixedPoint::new(12);
    let (hd, kvd) = (c.head_dim, c.kv_dim());
    let rows = steps.iter().map(Vec::len).sum::<usize>();
    for l in 0..c.n_layers {
        let (a, b) = (&sparse.caches[0].layers[l], &sparse.caches[1].layers[l]);
        assert_eq!(a.keys_open, b.keys_open);
        let groups: Vec<usize> = sparse.perms[l]
            .iter()
            .step_by(group)
            .map(|h| h / group)
            .collect();
        for (pg, &g) in groups.iter().enumerate() {
            for pos in 0..rows {
                for j in 0..hd {
                    let at = pos * kvd + pg * hd + j;
                    let key = a.keys_open[at]
                        .wrapping_add(a.key_mask[at])
                        .wrapping_add(b.key_mask[at]);
                    let value = a.values_open[at]
                        .wrapping_add(a.value_mask[at])
                        .wrapping_add(b.value_mask[at]);
                    let want_k = plain_cache.keys(l, g)[pos * hd + j] as f64;
                    let want_v = plain_cache.values(l, g)[pos * hd + j] as f64;
                    assert!(
                        (fp.decode(key) - want_k).abs() < 0.02,
                        "layer {l} pos {pos} key"
                    );
                    assert!(
                        (fp.decode(value) - want_v).abs() < 0.02,
                        "layer {l} pos {pos} value"
                    );
                }
            }
        }
    }
}

/// A random head predictor for the tiny model: about half the heads kept at threshold 0.
fn random_head_predictor(model: &Model, hidden: usize, seed: u64) -> HeadPredictor {
    let c = model.config();
    let mut prg = Prg::from_seed([seed as u8; 16]);
    let mut uniform = |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| ((prg.next_u64() >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0) * scale)
            .collect()
    };
    let layers = (0..c.n_layers)
        .map(|_| PredictorLayer {
            w1: uniform(hidden * c.d_model, 0.3),
            b1: uniform(hidden, 0.1),
            w2: uniform(c.n_heads * hidden, 0.5),
            b2: uniform(c.n_heads, 0.1),
            threshold: 0.0,
        })
        .collect();
    HeadPredictor {
        mlp: Predictor {
            model_sha256: "tiny".into(),
            d_model: c.d_model,
            hidden,
            ffn_dim: c.n_heads,
            sparsity: 0.5,
            layers,
        },
    }
}

#[test]
fn the_secure_head_gate_is_the_plaintext_predictor_and_the_output_follows_it() {
    let (_dir, model) = tiny_model(14);
    let c = model.config().clone();
    let fp = FixedPoint::new(12);
    let predictor = random_head_predictor(&model, 8, 3);
    let mut dep = deployment(&model, 9);
    dep.enable_sparse_heads(&model, Some(&predictor)).unwrap();
    let heads = SparseHeads::from_predictor(&predictor, &c, fp).unwrap();
    let mode = SessionMode {
        heads: Some(Arc::new(heads)),
        ..Default::default()
    };
    let steps = steps();
    let sparse = run(&mut dep, &model, mode, &steps);
    let (plain, _) = plaintext_with_heads(&model, &steps, &sparse.masks, &sparse.perms);
    assert_close(&sparse.logits, &plain);

    // The opened bits, mapped back through the dealer's order, are the plaintext predictor's
    // decisions on the same (masked) inputs, except at near-ties of the fixed-point logits.
    let n = c.n_heads;
    let (mut cache, mut decisions, mut disagree, mut kept) = (model.new_cache(), 0, 0, 0);
    for (tokens, step_masks) in steps.iter().zip(&sparse.masks) {
        let mut hook = |a: &mut AttnActivations<'_>| {
            let (bits, perm) = (&step_masks[a.layer], &sparse.perms[a.layer]);
            let logits = predictor.logits(a.layer, a.input, a.tokens);
            for t in 0..a.tokens {
                for (pos, &head) in perm.iter().enumerate() {
                    let logit = logits[t * n + head];
                    let secure = bits[t * n + pos];
                    decisions += 1;
                    kept += secure as usize;
                    if secure != (logit > 0.0) {
                        assert!(logit.abs() < 0.05, "logit {logit} decided {secure}");
                        disagree += 1;
                    }
                    if !secure {
                        let row = &mut a.heads[t * n * c.head_dim..(t + 1) * n * c.head_dim];
                        row[head * c.head_dim..(head + 1) * c.head_dim].fill(0.0);
                    }
                }
            }
        };
        let options = ForwardOptions {
            attn_hook: Some(&mut hook),
            ..Default::default()
        };
        model.forward_with(tokens, &mut cache, options).unwrap();
    }
    assert!(
        disagree * 50 < decisions,
        "{disagree} of {decisions} disagree"
    );
    assert!(
        kept > decisions / 5 && kept < decisions * 4 / 5,
        "{kept} of {decisions} kept"
    );
    let active: u64 = sparse.costs.iter().flat_map(|s| s.attn_active.iter()).sum();
    assert_eq!(active as usize, kept);
}

#[test]
fn a_head_predictor_of_another_shape_is_refused() {
    let (_dir, model) = tiny_model(14);
    let mut predictor = random_head_predictor(&model, 4, 1);
    predictor.mlp.ffn_dim += 1;
    let e = SparseHeads::from_predictor(&predictor, model.config(), FixedPoint::new(12));
    assert!(e.unwrap_err().to_string().contains("heads"));
    let mut dep = head_deployment(&model, 2);
    assert!(dep.enable_sparse_heads(&model, Some(&predictor)).is_err());
}

#[test]
fn a_prompt_without_heads_leaves_every_row_a_hole_for_the_next_step() {
    let (_dir, model) = tiny_model(15);
    let c = model.config().clone();
    let mut dep = head_deployment(&model, 6);
    let policy = SparseHeads {
        forced_prompt_skip: true,
        ..SparseHeads::default()
    };
    let mode = SessionMode {
        heads: Some(Arc::new(policy)),
        ..Default::default()
    };
    let steps = steps();
    let sparse = run(&mut dep, &model, mode, &steps);
    let rows = (steps[0].len() * c.n_kv_heads * c.n_layers) as u64;
    assert_eq!(
        (sparse.costs[0].kv_holes, sparse.costs[1].kv_refilled),
        (rows, rows)
    );
    assert_eq!(sparse.costs[0].attn_active, vec![0; c.n_layers]);
    let (plain, _) = plaintext_with_heads(&model, &steps, &sparse.masks, &sparse.perms);
    assert_close(&sparse.logits, &plain);
}
