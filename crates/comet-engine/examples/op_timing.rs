//! Times the nonlinear steps of one SmolLM2-shaped block on two in-process servers.

use comet_core::{FixedPoint, Prg};
use comet_dealer::{Dealer, InProcessDealer};
use comet_protocols::testing::run_pair_with;
use std::time::Instant;

fn main() {
    let dealer = InProcessDealer::new(Dealer::with_prg(Prg::from_seed([1; 16])));
    let m = 6;
    let (r0, _r1) = run_pair_with(&dealer, FixedPoint::new(12), |p| {
        let x = vec![0u64; m * 576];
        let t = Instant::now();
        let _ = comet_engine::nl::rms_normalize(p, &x, m, 576, 1e-5)
            .map_err(|e| comet_protocols::ProtocolError::Shape(e.to_string()))?;
        let a = t.elapsed();
        let s = vec![0u64; 9 * m * m];
        let t = Instant::now();
        let _ = comet_engine::nl::causal_softmax(p, &s, 9, m, 0)
            .map_err(|e| comet_protocols::ProtocolError::Shape(e.to_string()))?;
        let b = t.elapsed();
        let g = vec![0u64; m * 1536];
        let t = Instant::now();
        let _ = comet_engine::nl::silu(p, &g)
            .map_err(|e| comet_protocols::ProtocolError::Shape(e.to_string()))?;
        let c = t.elapsed();
        Ok((a, b, c))
    });
    let (a, b, c) = r0.unwrap();
    println!("rms_normalize {a:?}  softmax {b:?}  silu {c:?}");
}
