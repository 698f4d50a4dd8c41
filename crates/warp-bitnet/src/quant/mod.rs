//! Quantizers: ternary weights (BitNet b1.58), INT2 weights and per-token int8 activations.
//!
//! Rounding is round-half-to-even everywhere (`f32::round_ties_even`), the IEEE
//! default and what `torch.round` does, so the CPU, the GPU and PyTorch agree.
//! NaN and infinity are rejected with [`Error::NonFinite`](crate::Error::NonFinite).

mod activation;
mod int2;
mod ternary;

pub use activation::{quantize_activations_i8, ActivationQuant, ACT_EPS};
pub use int2::{quantize_int2, Int2Quant};
pub use ternary::{quantize_ternary, WeightQuant, WEIGHT_EPS};

use crate::error::{Error, Result};

fn check_finite(arg: &'static str, values: impl Iterator<Item = f32>) -> Result<()> {
    for (index, value) in values.enumerate() {
        if !value.is_finite() {
            return Err(Error::NonFinite { arg, index, value });
        }
    }
    Ok(())
}
