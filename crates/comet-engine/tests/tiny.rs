//! Secure generation on a tiny random llama model against the plaintext reference.

mod common;

use comet_engine::local::{capacity_for, generate};
use comet_model::{Sampler, SamplingParams};
use comet_net::NetProfile;
use common::{deployment, tiny_model};

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn prefill_and_decode_logits_match_plaintext() {
    let (_dir, model) = tiny_model(11);
    let mut dep = deployment(&model, 3);
    let prompt = [5u32, 17, 9, 30, 2, 41];
    let mut session = dep.session(prompt.len() + 3, NetProfile::none()).unwrap();
    let mut cache = model.new_cache();
    let reference = model.forward_all(&prompt, &mut cache).unwrap();
    let got = session.client().step(&prompt, true).unwrap();
    let scale = reference.iter().fold(0f32, |a, v| a.max(v.abs()));
    let err = max_abs_diff(&got.logits, &reference);
    eprintln!("prefill: max |logit| {scale}, max error {err}");
    assert!(
        err < 0.01 * scale.max(1.0),
        "prefill logits differ by {err} (scale {scale})"
    );
    for next in [7u32, 12, 3] {
        let reference = model.forward(&[next], &mut cache).unwrap();
        let got = session.client().step(&[next], false).unwrap();
        let err = max_abs_diff(&got.logits, &reference);
        eprintln!("decode: max error {err}");
        assert!(err < 0.01 * scale.max(1.0), "decode logits differ by {err}");
        assert!(got.costs.rounds > 0 && got.costs.online_bytes > 0);
    }
    let summaries = session.finish().unwrap();
    assert_eq!(summaries[0].positions, prompt.len() + 3);
}

#[test]
fn greedy_generation_matches_plaintext() {
    let (_dir, model) = tiny_model(5);
    let mut dep = deployment(&model, 9);
    let prompt = [1u32, 20, 33, 8];
    let max_tokens = 6;
    let mut sampler = Sampler::new(SamplingParams::default());
    let (plain, _) =
        comet_model::generate(&model, &prompt, max_tokens, &mut sampler, &[], |_| Ok(())).unwrap();
    let mut session = dep
        .session(capacity_for(prompt.len(), max_tokens), NetProfile::none())
        .unwrap();
    let mut sampler = Sampler::new(SamplingParams::default());
    let secure = generate(
        session.client(),
        &prompt,
        max_tokens,
        &mut sampler,
        &[],
        "none",
        |_| Ok(()),
    )
    .unwrap();
    session.finish().unwrap();
    assert_eq!(secure.tokens, plain);
    assert_eq!(secure.report.decode.len(), max_tokens - 1);
}

#[test]
fn bad_requests_and_a_vanished_client_end_with_errors_on_every_party() {
    let (_dir, model) = tiny_model(2);
    let mut dep = deployment(&model, 4);
    assert!(
        dep.session(0, NetProfile::none()).is_err(),
        "an empty session is refused"
    );
    assert!(
        dep.session(10_000, NetProfile::none()).is_err(),
        "a session beyond the context is refused"
    );
    let mut session = dep.session(4, NetProfile::none()).unwrap();
    let client = session.client();
    assert!(client.step(&[], false).is_err(), "no tokens");
    assert!(
        client.step(&[1_000_000], false).is_err(),
        "token outside the vocabulary"
    );
    assert!(
        client.step(&[1, 2, 3, 4, 5], false).is_err(),
        "longer than the session"
    );
    client.step(&[1, 2], false).unwrap();
    // The client disappears mid-generation: both servers stop with an error, none hangs.
    let results = session.abort();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r.is_err()));
}
