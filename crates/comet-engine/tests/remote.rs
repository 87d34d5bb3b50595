//! Shares on disk and the multi-party session start-up, on a tiny model, each party on its own
//! thread over in-memory links (the CLI runs the same code over TLS).

use comet_core::{FixedPoint, PartyId, Prg};
use comet_engine::local::{capacity_for, generate};
use comet_engine::remote::{client_connect, dealer_session, server_session};
use comet_engine::shares::{file_sha256, load_dealer, load_server_model, write_shares};
use comet_engine::sparse::SessionMode;
use comet_engine::EngineError;
use comet_model::{Model, Sampler, SamplingParams};
use comet_net::{memory_pair, Channel};

fn boxed(c: comet_net::MemoryChannel) -> Box<dyn Channel> {
    Box::new(c)
}

#[test]
fn shares_on_disk_and_separate_parties_reproduce_plaintext_greedy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    comet_model::testing::write_tiny_llama_gguf(&path, 21).unwrap();
    let model = Model::load(&path).unwrap();
    let hash = file_sha256(&path).unwrap();
    let shares = dir.path().join("shares");
    write_shares(
        &model,
        &hash,
        FixedPoint::new(12),
        &shares,
        &mut Prg::from_seed([4; 16]),
    )
    .unwrap();
    let config = model.config().clone();

    // Another model's hash is refused by servers and dealer alike.
    let other = "0".repeat(64);
    assert!(matches!(
        load_server_model(&shares, PartyId::P0, &config, &other),
        Err(EngineError::ShareMismatch(_))
    ));
    assert!(matches!(
        load_dealer(&shares, &config, &other),
        Err(EngineError::ShareMismatch(_))
    ));

    let m0 = load_server_model(&shares, PartyId::P0, &config, &hash).unwrap();
    let m1 = load_server_model(&shares, PartyId::P1, &config, &hash).unwrap();
    let dealer = load_dealer(&shares, &config, &hash).unwrap();
    let prompt = [3u32, 14, 15, 9, 26];
    let max_tokens = 5;
    let (p01, p10) = memory_pair();
    let (c0, s0) = memory_pair();
    let (c1, s1) = memory_pair();
    let (d0, dp0) = memory_pair();
    let (d1, dp1) = memory_pair();
    let cfg = config.clone();
    let dealer_thread = std::thread::spawn(move || {
        dealer_session(
            std::sync::Arc::new(std::sync::Mutex::new(dealer)),
            &cfg,
            [boxed(dp0), boxed(dp1)],
            &mut Prg::from_seed([5; 16]),
        )
    });
    let t0 = std::thread::spawn(move || {
        server_session(
            PartyId::P0,
            &m0,
            &SessionMode::default(),
            boxed(s0),
            boxed(p01),
            boxed(d0),
        )
    });
    let t1 = std::thread::spawn(move || {
        server_session(
            PartyId::P1,
            &m1,
            &SessionMode::default(),
            boxed(s1),
            boxed(p10),
            boxed(d1),
        )
    });
    let capacity = capacity_for(prompt.len(), max_tokens);
    let mut client = client_connect(
        [boxed(c0), boxed(c1)],
        config.vocab_size,
        FixedPoint::new(12),
        capacity,
    )
    .unwrap();
    let mut sampler = Sampler::new(SamplingParams::default());
    let secure = generate(
        &mut client,
        &prompt,
        max_tokens,
        &mut sampler,
        &[],
        "none",
        |_| Ok(()),
    )
    .unwrap();
    client.finish().unwrap();
    t0.join().unwrap().unwrap();
    t1.join().unwrap().unwrap();
    dealer_thread.join().unwrap().unwrap();
    let mut sampler = Sampler::new(SamplingParams::default());
    let (plain, _) =
        comet_model::generate(&model, &prompt, max_tokens, &mut sampler, &[], |_| Ok(())).unwrap();
    assert_eq!(secure.tokens, plain);
}
