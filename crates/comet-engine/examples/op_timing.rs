//! Times the steps of one SmolLM2-shaped block at decode size (one token) on two in-process
//! servers, separating the waits for dealer material from the rest.

use comet_core::{FixedPoint, Prg};
use comet_dealer::{Dealer, InProcessDealer};
use comet_protocols::{arith, ProtocolError};
use std::time::Instant;

fn main() {
    let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([1; 16])));
    let mut prg = Prg::from_seed([2; 16]);
    let w = prg.gen_u64s(576 * 1536);
    let views = dealer.with(|d| d.register_weight(&w, 576, 1536));
    let (r0, _r1) = comet_protocols::testing::run_pair_with(&dealer, FixedPoint::new(12), |p| {
        let shape = |e: comet_engine::EngineError| ProtocolError::Shape(e.to_string());
        let mut out = Vec::new();
        for _ in 0..2 {
            let x = vec![p.fp.encode(0.5); 576];
            let t = Instant::now();
            comet_engine::nl::norm_matmul(p, &x, 1, 576, 1e-5, &[&views[p.id.index()]], 64)
                .map_err(shape)?;
            let a = t.elapsed();
            let s = vec![0u64; 9 * 64];
            let t = Instant::now();
            comet_engine::nl::causal_softmax(p, &s, &[0; 9], 63, 64).map_err(shape)?;
            let b = t.elapsed();
            let g = vec![0u64; 1536];
            let t = Instant::now();
            comet_engine::nl::silu_mul(p, &g, &g).map_err(shape)?;
            let c = t.elapsed();
            let t = Instant::now();
            arith::matmul_fixed(p, &x, 1, &[&views[p.id.index()]])?;
            let d = t.elapsed();
            out.push((a, b, c, d));
        }
        Ok(out)
    });
    for (a, b, c, d) in r0.unwrap() {
        println!(
            "norm+matmul 576x1536 {a:?}  softmax(9x64) {b:?}  silu·up(1536) {c:?}  matmul 576x1536 {d:?}"
        );
    }
}
