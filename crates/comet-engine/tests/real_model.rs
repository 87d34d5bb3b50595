//! Secure greedy generation on the real SmolLM2-135M model against the plaintext reference.
//! Skipped (passes trivially with a note) when the model file is not installed.

use comet_core::FixedPoint;
use comet_engine::local::{capacity_for, generate};
use comet_engine::LocalDeployment;
use comet_model::{Sampler, SamplingParams};
use comet_net::NetProfile;

#[test]
fn secure_greedy_text_matches_plaintext_on_smollm2() {
    let Some(path) = comet_model::find_default_model() else {
        eprintln!(
            "skipped: {} is not installed (run scripts/setup)",
            comet_model::DEFAULT_MODEL_FILE
        );
        return;
    };
    let (model, tokenizer) = comet_model::load(&path).unwrap();
    let prompt = tokenizer.encode("The capital of France is").unwrap();
    let max_tokens = 3;
    let mut sampler = Sampler::new(SamplingParams::default());
    let (plain, _) =
        comet_model::generate(&model, &prompt, max_tokens, &mut sampler, &[], |_| Ok(())).unwrap();
    let mut dep = LocalDeployment::share(&model, FixedPoint::new(12)).unwrap();
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
    eprintln!("{}", secure.report.table());
    assert_eq!(
        tokenizer.decode(&secure.tokens).unwrap(),
        tokenizer.decode(&plain).unwrap(),
        "secure and plaintext greedy continuations differ"
    );
}
