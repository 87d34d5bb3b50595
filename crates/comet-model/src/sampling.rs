//! Next-token selection: greedy (argmax) or temperature + nucleus (top-p) sampling driven by
//! the seeded AES PRG of `comet-core`, so runs are reproducible from a seed.

use comet_core::Prg;

/// How to pick the next token from logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 (or less) means greedy argmax.
    pub temperature: f32,
    /// Nucleus mass: sample among the most likely tokens whose probabilities sum to `top_p`.
    pub top_p: f32,
    /// PRG seed for the random draws.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Stateful sampler (the PRG advances with every draw).
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    prg: Prg,
}

impl Sampler {
    /// A sampler with `params`; the PRG is seeded from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        let mut seed = [0u8; 16];
        seed[..8].copy_from_slice(&params.seed.to_le_bytes());
        seed[8..].copy_from_slice(b"cmt-samp");
        Self {
            params,
            prg: Prg::from_seed(seed),
        }
    }

    /// Picks the next token from `logits` (one value per vocabulary entry).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if logits.is_empty() {
            return 0;
        }
        if self.params.temperature <= 0.0 || !self.params.temperature.is_finite() {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature as f64;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i as u32, ((l as f64 - max) * inv_t).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let top_p = self.params.top_p.clamp(0.0, 1.0) as f64;
        let mut kept = probs.len();
        if top_p < 1.0 {
            probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut mass = 0.0;
            kept = 0;
            for p in &probs {
                mass += p.1 / total;
                kept += 1;
                if mass >= top_p {
                    break;
                }
            }
        }
        let candidates = &probs[..kept.max(1)];
        let kept_total: f64 = candidates.iter().map(|p| p.1).sum();
        let u = (self.prg.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * kept_total;
        let mut acc = 0.0;
        for p in candidates {
            acc += p.1;
            if u < acc {
                return p.0;
            }
        }
        candidates[candidates.len() - 1].0
    }
}

/// Index of the largest logit (the first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&[0.1, 3.0, -2.0, 3.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn sampling_follows_the_distribution_and_top_p_cuts_the_tail() {
        let logits = [2f32.ln(), 1f32.ln(), 1f32.ln()]; // probabilities 1/2, 1/4, 1/4
        let params = SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
        };
        let mut s = Sampler::new(params);
        let n = 20_000;
        let mut counts = [0usize; 3];
        for _ in 0..n {
            counts[s.sample(&logits) as usize] += 1;
        }
        for (c, p) in counts.iter().zip([0.5, 0.25, 0.25]) {
            assert!((*c as f64 / n as f64 - p).abs() < 0.02, "{counts:?}");
        }
        let mut nucleus = Sampler::new(SamplingParams {
            top_p: 0.5,
            ..params
        });
        assert!((0..1000).all(|_| nucleus.sample(&logits) == 0));
        let mut a = Sampler::new(params);
        let mut b = Sampler::new(params);
        assert!((0..100).all(|_| a.sample(&logits) == b.sample(&logits)));
    }
}
