//! FFN activation sparsity definitions shared by the plaintext reference and the secure engine
//! (DESIGN.md §7): the sparsity setting, and the *self-gate*, which keeps neuron `j` of a token
//! when `|SiLU(g̃_j)·ũ_j|` exceeds a per-layer threshold, `g̃` and `ũ` being the gate and up
//! pre-activations quantized to a few bits.
//!
//! The quantization is defined on the fixed-point integer at `2f` fractional bits (what the
//! secure engine holds before truncation): `code = ⌊v·mult / 2^shift⌋ mod 2^bits`, read as a
//! signed `bits`-bit number. On secret shares each server computes `((share·mult) mod 2^64) >>
//! shift` and keeps `bits` bits: the two results add up to `code` or `code − 1` (mod 2^bits),
//! never a wrap-around, because `shift + bits ≤ 64`. That one-step rounding tie is the only
//! difference between the secure gate and [`SelfGate::keep`].

use crate::error::{ModelError, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Version of the self-gate file format written by `comet calibrate`.
pub const SELF_GATE_VERSION: u32 = 1;

/// Largest code width (the decision table has 2^(2·bits) entries).
pub const MAX_GATE_BITS: u32 = 8;

/// Smallest code width.
pub const MIN_GATE_BITS: u32 = 2;

/// What is skipped: `off`, or `ffn=F` with F the fraction of FFN neurons dropped per token
/// (the calibration target; the count per token varies with the per-layer threshold).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SparsitySpec {
    /// Target fraction of FFN neurons skipped, in `[0, 1)`; `None` means dense.
    pub ffn: Option<f64>,
}

impl SparsitySpec {
    /// Dense: nothing is skipped.
    pub fn off() -> Self {
        Self::default()
    }

    /// True when something is skipped.
    pub fn is_sparse(&self) -> bool {
        self.ffn.is_some()
    }
}

impl std::fmt::Display for SparsitySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ffn {
            None => write!(f, "off"),
            Some(v) => write!(f, "ffn={v}"),
        }
    }
}

impl std::str::FromStr for SparsitySpec {
    type Err = ModelError;

    /// Parses `off` or `ffn=0.5`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            ModelError::InvalidInput(format!(
                "sparsity `{s}`: {why} (expected `off` or `ffn=0.5`)"
            ))
        };
        let s = s.trim();
        if s == "off" || s == "dense" {
            return Ok(Self::off());
        }
        let mut spec = Self::off();
        for part in s.split(',') {
            let (key, value) = part.split_once('=').ok_or_else(|| bad("missing `=`"))?;
            let v: f64 = value.trim().parse().map_err(|_| bad("not a number"))?;
            if !(0.0..1.0).contains(&v) {
                return Err(bad("the fraction must be in [0, 1)"));
            }
            match key.trim() {
                "ffn" if spec.ffn.is_none() => spec.ffn = Some(v),
                "ffn" => return Err(bad("`ffn` given twice")),
                other => return Err(bad(&format!("unknown part `{other}`"))),
            }
        }
        Ok(spec)
    }
}

/// Maps a pre-activation at `2f` fractional bits to a signed `bits`-bit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quantizer {
    /// Integer multiplier (below 2^16).
    pub mult: u64,
    /// Right shift after the multiplication (`shift + bits ≤ 64`).
    pub shift: u32,
}

impl Quantizer {
    /// The quantizer whose largest positive code `2^(bits−1) − 1` is reached at `clip`
    /// (a positive value, e.g. a calibrated maximum with margin); larger values wrap.
    pub fn covering(clip: f64, bits: u32, frac_bits: u32) -> Result<Self> {
        check_bits(bits)?;
        if !(clip.is_finite() && clip > 0.0) {
            return Err(ModelError::InvalidInput(format!(
                "quantizer range {clip} must be a positive number"
            )));
        }
        // code = v·2^(2f)·mult/2^shift; want mult/2^shift = (2^(bits−1) − 1)/(clip·2^(2f)).
        let ratio = ((1u64 << (bits - 1)) - 1) as f64 / (clip * (2.0 * frac_bits as f64).exp2());
        // mult in [2^15, 2^16).
        let shift = (15.0 - ratio.log2()).ceil().max(0.0) as u32;
        if shift + bits > 64 {
            return Err(ModelError::InvalidInput(format!(
                "quantizer range {clip} is too small for {bits} bits at f = {frac_bits}"
            )));
        }
        let mult = (ratio * (shift as f64).exp2()).round().max(1.0) as u64;
        Ok(Self { mult, shift })
    }

    /// The value of one code step.
    pub fn step(&self, frac_bits: u32) -> f64 {
        (self.shift as f64).exp2() / (self.mult as f64 * (2.0 * frac_bits as f64).exp2())
    }

    /// The unsigned code (mod 2^bits) of a fixed-point integer `v` at `2f` fractional bits.
    pub fn code_of_fixed(&self, v: i64, bits: u32) -> u32 {
        let scaled = (v as i128 * self.mult as i128) >> self.shift;
        (scaled as u64 & ((1u64 << bits) - 1)) as u32
    }

    /// The unsigned code of a real value (rounded to `2f` fractional bits first).
    pub fn code_of(&self, v: f32, frac_bits: u32, bits: u32) -> u32 {
        let fixed = (v as f64 * (2.0 * frac_bits as f64).exp2()).round() as i64;
        self.code_of_fixed(fixed, bits)
    }
}

/// The signed value of an unsigned `bits`-bit code.
pub fn signed_code(code: u32, bits: u32) -> i64 {
    let c = code as i64;
    if c >= 1 << (bits - 1) {
        c - (1 << bits)
    } else {
        c
    }
}

fn check_bits(bits: u32) -> Result<()> {
    if !(MIN_GATE_BITS..=MAX_GATE_BITS).contains(&bits) {
        return Err(ModelError::InvalidInput(format!(
            "self-gate code width {bits} bits: supported {MIN_GATE_BITS}..={MAX_GATE_BITS}"
        )));
    }
    Ok(())
}

/// The self-gate of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelfGateLayer {
    /// Quantizer of the gate pre-activation.
    pub gate: Quantizer,
    /// Quantizer of the up pre-activation.
    pub up: Quantizer,
    /// A neuron is kept when `|SiLU(g̃)·ũ| > threshold` on the dequantized codes.
    pub threshold: f64,
}

/// A calibrated self-gate for one model: per-layer quantizers and thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SelfGate {
    /// File format version ([`SELF_GATE_VERSION`]).
    pub version: u32,
    /// SHA-256 (hex) of the model file it was calibrated on.
    pub model_sha256: String,
    /// Fixed-point fractional bits `f` the quantizers assume (inputs at `2f`).
    pub frac_bits: u32,
    /// Code width of each of g̃ and ũ.
    pub bits: u32,
    /// The target fraction of neurons skipped that the thresholds were calibrated for.
    pub sparsity: f64,
    /// One entry per transformer block.
    pub layers: Vec<SelfGateLayer>,
}

impl SelfGate {
    /// Checks the structural invariants (version, widths, shifts) and the layer count.
    pub fn validate(&self, n_layers: usize) -> Result<()> {
        if self.version != SELF_GATE_VERSION {
            return Err(ModelError::InvalidInput(format!(
                "self-gate file version {} (this build reads version {SELF_GATE_VERSION})",
                self.version
            )));
        }
        check_bits(self.bits)?;
        if self.layers.len() != n_layers {
            return Err(ModelError::InvalidInput(format!(
                "self-gate file has {} layers, the model has {n_layers}",
                self.layers.len()
            )));
        }
        for (l, layer) in self.layers.iter().enumerate() {
            for q in [layer.gate, layer.up] {
                if q.mult == 0 || q.mult >= 1 << 16 || q.shift + self.bits > 64 {
                    return Err(ModelError::InvalidInput(format!(
                        "self-gate layer {l}: quantizer {q:?} is out of range"
                    )));
                }
            }
            if !layer.threshold.is_finite() || layer.threshold < 0.0 {
                return Err(ModelError::InvalidInput(format!(
                    "self-gate layer {l}: threshold {} is not a non-negative number",
                    layer.threshold
                )));
            }
        }
        Ok(())
    }

    /// Reads a self-gate file and checks it belongs to the model with hash `model_sha256`
    /// and `n_layers` blocks.
    pub fn load(path: &Path, model_sha256: &str, n_layers: usize) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ModelError::InvalidInput(format!(
                "cannot read self-gate file {}: {e}",
                path.display()
            ))
        })?;
        let gate: Self = serde_json::from_str(&text).map_err(|e| {
            ModelError::InvalidInput(format!(
                "self-gate file {} is malformed: {e}",
                path.display()
            ))
        })?;
        if gate.model_sha256 != model_sha256 {
            return Err(ModelError::InvalidInput(format!(
                "self-gate file {} was calibrated for model {}, not for this model ({model_sha256})",
                path.display(),
                gate.model_sha256
            )));
        }
        gate.validate(n_layers)?;
        Ok(gate)
    }

    /// Writes the file as JSON.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).expect("self-gate serialises");
        std::fs::write(path, text).map_err(|e| {
            ModelError::InvalidInput(format!(
                "cannot write self-gate file {}: {e}",
                path.display()
            ))
        })
    }

    /// Whether `(g̃, ũ)` (unsigned codes) keeps the neuron in layer `l`.
    pub fn keep_codes(&self, l: usize, g_code: u32, u_code: u32) -> bool {
        let layer = &self.layers[l];
        let g = signed_code(g_code, self.bits) as f64 * layer.gate.step(self.frac_bits);
        let u = signed_code(u_code, self.bits) as f64 * layer.up.step(self.frac_bits);
        (silu(g) * u).abs() > layer.threshold
    }

    /// The plaintext decision for one neuron of layer `l` from its real pre-activations.
    pub fn keep(&self, l: usize, gate: f32, up: f32) -> bool {
        let layer = &self.layers[l];
        self.keep_codes(
            l,
            layer.gate.code_of(gate, self.frac_bits, self.bits),
            layer.up.code_of(up, self.frac_bits, self.bits),
        )
    }

    /// Words of 64 bits per row of [`SelfGate::table`].
    pub fn table_row_words(&self) -> usize {
        ((1usize << self.bits) / 64).max(1)
    }

    /// Layer `l`'s decision table: row `g̃` (unsigned code) is [`SelfGate::table_row_words`]
    /// words; bit `ũ` of the row (word `ũ / 64`, bit `ũ mod 64`) is set when kept.
    pub fn table(&self, l: usize) -> Vec<u64> {
        let size = 1u32 << self.bits;
        let words = self.table_row_words();
        let mut out = vec![0u64; size as usize * words];
        for g in 0..size {
            for u in 0..size {
                if self.keep_codes(l, g, u) {
                    out[g as usize * words + u as usize / 64] |= 1 << (u % 64);
                }
            }
        }
        out
    }
}

fn silu(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parses_and_rejects() {
        assert_eq!("off".parse::<SparsitySpec>().unwrap(), SparsitySpec::off());
        assert_eq!("ffn=0.5".parse::<SparsitySpec>().unwrap().ffn, Some(0.5));
        for bad in [
            "ffn",
            "ffn=x",
            "ffn=1.5",
            "heads=0.1",
            "ffn=0.5,ffn=0.2",
            "",
        ] {
            let e = bad.parse::<SparsitySpec>().unwrap_err().to_string();
            assert!(e.contains("sparsity"), "{bad}: {e}");
        }
    }

    #[test]
    fn quantizer_covers_its_range_and_wraps_beyond() {
        let f = 12;
        for bits in MIN_GATE_BITS..=MAX_GATE_BITS {
            let q = Quantizer::covering(49.0, bits, f).unwrap();
            assert!(q.mult < 1 << 16 && q.mult >= 1 << 14, "{q:?}");
            let top = signed_code(q.code_of(49.0, f, bits), bits);
            assert!(
                (top - ((1 << (bits - 1)) - 1)).abs() <= 1,
                "bits {bits}: {top}"
            );
            let bottom = signed_code(q.code_of(-49.0, f, bits), bits);
            assert!(bottom <= -(1 << (bits - 1)) + 1, "bits {bits}: {bottom}");
            assert_eq!(q.code_of(0.0, f, bits), 0);
            // Exactly the floor of v·mult/2^shift.
            let v = -123_456_789i64;
            let want = ((v as i128 * q.mult as i128) >> q.shift) as i64;
            assert_eq!(q.code_of_fixed(v, bits) as i64, want.rem_euclid(1 << bits));
        }
        assert!(Quantizer::covering(0.0, 6, f).is_err());
        assert!(Quantizer::covering(1.0, 9, f).is_err());
        assert!(Quantizer::covering(1.0, 1, f).is_err());
    }

    #[test]
    fn table_matches_the_decision() {
        let f = 12;
        let bits = 5;
        let layer = SelfGateLayer {
            gate: Quantizer::covering(8.0, bits, f).unwrap(),
            up: Quantizer::covering(4.0, bits, f).unwrap(),
            threshold: 0.5,
        };
        let gate = SelfGate {
            version: SELF_GATE_VERSION,
            model_sha256: "x".into(),
            frac_bits: f,
            bits,
            sparsity: 0.5,
            layers: vec![layer],
        };
        gate.validate(1).unwrap();
        let table = gate.table(0);
        for g in 0..32 {
            for u in 0..32 {
                assert_eq!(table[g as usize] >> u & 1 == 1, gate.keep_codes(0, g, u));
                assert_eq!(gate.table_row_words(), 1);
            }
        }
        assert!(gate.keep(0, 6.0, 3.0));
        assert!(!gate.keep(0, 0.01, 0.01));
        assert!(gate.validate(2).is_err());
    }

    #[test]
    fn load_checks_the_model_hash() {
        let dir = std::env::temp_dir().join(format!("comet-gate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gate.json");
        let gate = SelfGate {
            version: SELF_GATE_VERSION,
            model_sha256: "abc".into(),
            frac_bits: 12,
            bits: 6,
            sparsity: 0.5,
            layers: vec![],
        };
        gate.save(&path).unwrap();
        assert_eq!(SelfGate::load(&path, "abc", 0).unwrap(), gate);
        let e = SelfGate::load(&path, "def", 0).unwrap_err().to_string();
        assert!(e.contains("calibrated for model abc"), "{e}");
        std::fs::write(&path, "{").unwrap();
        assert!(SelfGate::load(&path, "abc", 0)
            .unwrap_err()
            .to_string()
            .contains("malformed"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
