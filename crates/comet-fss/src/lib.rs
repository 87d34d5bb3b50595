//! comet-fss: function secret sharing primitives for the comet 2PC engine (sans-IO).
//!
//! * [`prg`]: fixed-key AES-128 MMO length-doubling PRG (one AES call per child taken).
//! * [`dcf`]: BCG+21 distributed comparison function with a payload in (Z_2^ℓ)^W.
//! * [`dpf`]: 1-bit DPF with early termination (128-bit leaves), full-domain evaluation and
//!   SIGMA's DPF-based comparison `1{x < α}`.
//! * [`gates`]: masked-input gates: DReLU (DCF, arithmetic output; or DPF, masked bit),
//!   one-round ReLU,
//!   public-threshold comparison and the SIGMA DPF lookup table.
//!
//! Key generation takes randomness from [`comet_core::Prg`] and returns both parties' keys;
//! every key type has `to_bytes`, `from_bytes` (structural errors, never panics) and
//! `encoded_len`.

#![warn(missing_docs)]

mod codec;
pub mod dcf;
pub mod dpf;
pub mod error;
pub mod gates;
pub mod prg;

pub use dcf::{dcf_eval, dcf_eval_batch, dcf_eval_vec, dcf_gen, dcf_gen_vec, DcfKey};
pub use dpf::{dpf_eval_all, dpf_eval_bit, dpf_gen, dpf_lt, dpf_lt_batch, DpfKey};
pub use error::FssError;
pub use gates::{
    cmp_ge_eval, cmp_lt_eval, drelu_bit_eval, drelu_bit_eval_batch, drelu_bit_finish,
    drelu_bit_gen, drelu_eval, drelu_eval_batch, drelu_gen, lut_eval, lut_eval_batch, lut_finish,
    lut_gen, lut_mask_v, relu_eval, relu_eval_batch, relu_gen, DreluBitKey, DreluKey, LutKey,
    ReluKey,
};
pub use prg::TreePrg;
