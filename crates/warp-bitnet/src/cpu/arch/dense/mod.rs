//! Dense-weight matrix-vector products for the engine's lm_head ([`crate::cpu::dense`]):
//! f32, f16, bf16 or int8 weights against f32 activations, accumulated in f32.
//!
//! A decode step's lm_head is the largest single read of a small model (bitnet-b1.58-2B-4T:
//! 128256 x 2560, 656 MB in bf16), so it must run at DRAM speed: the AVX2 versions widen 8
//! weights per instruction (`vcvtph2ps` for f16, a 16-bit shift for bf16, `vpmovsxbd` +
//! `vcvtdq2ps` for int8) into FMA chains, ~4 vector ops per 16 bytes of 16-bit weights, far
//! under the bandwidth of one core. The portable versions are the oracle and the fallback;
//! `WARP_BITNET_CPU_ISA=portable` forces them as it does for the ternary kernels.

pub mod portable;
#[cfg(target_arch = "x86_64")]
mod x86_64;

use half::{bf16, f16};

use super::Isa;

/// Row-major weights of one or more rows, by element type.
#[derive(Clone, Copy, Debug)]
pub enum Rows<'a> {
    /// `f32` weights.
    F32(&'a [f32]),
    /// IEEE half-precision weights.
    F16(&'a [f16]),
    /// bfloat16 weights.
    Bf16(&'a [bf16]),
    /// Signed 8-bit weights (the caller applies each row's scale).
    I8(&'a [i8]),
}

impl Rows<'_> {
    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            Rows::F32(w) => w.len(),
            Rows::F16(w) => w.len(),
            Rows::Bf16(w) => w.len(),
            Rows::I8(w) => w.len(),
        }
    }

    /// Whether no element is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `out[r] = sum_k w[r * x.len() + k] * x[k]` in f32 for `r < out.len()`, with the best
/// instruction set of this CPU (or the one `WARP_BITNET_CPU_ISA` forces).
///
/// # Panics
/// If `w` holds fewer than `out.len() * x.len()` elements.
pub fn matvec(w: Rows<'_>, x: &[f32], out: &mut [f32]) {
    assert!(
        w.len() >= out.len() * x.len(),
        "{} weights for {} rows of {}",
        w.len(),
        out.len(),
        x.len()
    );
    #[cfg(target_arch = "x86_64")]
    if avx2_f16c() {
        // SAFETY: AVX2, FMA and F16C were detected; `w` holds `out.len()` rows of `x.len()`
        // (asserted above).
        return unsafe { x86_64::matvec(w, x, out) };
    }
    portable::matvec(w, x, out)
}

/// Whether the AVX2 path runs: the detected (or forced) ternary ISA is AVX2 and the CPU
/// has F16C (every AVX2 CPU does; checked anyway).
#[cfg(target_arch = "x86_64")]
fn avx2_f16c() -> bool {
    matches!(Isa::detect(), Ok(Isa::Avx2)) && is_x86_feature_detected!("f16c")
}
