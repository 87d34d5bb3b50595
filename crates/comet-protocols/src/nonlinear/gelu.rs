//! GeLU(x) = x·Φ(x) (exact erf form) as ReLU(x) minus a gated table of ReLU − GeLU.
//!
//! * Range: table on [−8, 8) ([`GELU_RANGE`]); outside it the output is exactly ReLU(x)
//!   (the ideal function differs by < 2^-47 there). Inputs: |x| < 2^(ACTIVATION_BITS − 2)
//!   ring units.
//! * Same construction and error bound as [`super::silu()`] (8 fractional index bits, m = 12):
//!   max abs error ≤ 2^-9 at f = 12, measured in `gelu_error_is_below_bound`.
//! * Cost: 2 rounds, 16 bytes per element each way.

use super::silu::relu_minus_even_table;
use super::{gelu_f64, ACTIVATION_BITS};
use crate::{Party, ProtocolError};

/// The table covers |x| < GELU_RANGE; beyond it GeLU is replaced by ReLU exactly.
pub const GELU_RANGE: f64 = 8.0;

/// Ideal functionality: shares of GeLU(x) = x·Φ(x) at the party's scale f, with max abs error
/// ≤ 2^-9 on [−8, 8) and exactly ReLU(x) outside (0 below −8, x from 8 on). Two rounds.
pub fn gelu(p: &mut Party, x: &[u64]) -> Result<Vec<u64>, ProtocolError> {
    gelu_with_bits(p, x, ACTIVATION_BITS)
}

/// [`gelu`] for inputs known to satisfy |x| < 2^(bits − 2) ring units (smaller keys).
pub fn gelu_with_bits(p: &mut Party, x: &[u64], bits: u32) -> Result<Vec<u64>, ProtocolError> {
    let _scope = p.scope("gelu");
    relu_minus_even_table(p, x, "gelu", |v| v.max(0.0) - gelu_f64(v), 3, bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nonlinear::silu::tests::check_activation;

    #[test]
    fn gelu_error_is_below_bound() {
        check_activation("gelu", gelu_f64, gelu, GELU_RANGE, 2f64.powi(-9));
    }
}
