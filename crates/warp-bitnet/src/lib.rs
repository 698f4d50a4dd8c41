//! Ternary (BitNet b1.58) linear algebra: weights in {-1, 0, +1} packed at 2 bits,
//! multiplied by activations on the CPU or, through NVRTC-compiled kernels, on NVIDIA GPUs.
//!
//! ```
//! use warp_bitnet::{cpu, quant, Scale, TernaryMatrix};
//!
//! // Quantize a dense 2 x 3 matrix with BitNet b1.58 absmean (gamma = mean |W|).
//! let dense = [0.9f32, -1.1, 0.05, 0.0, 1.2, -0.8];
//! let w = quant::quantize_ternary(&dense, 2, 3, quant::WeightQuant::AbsMean)?;
//! assert_eq!(w.to_ternary(), vec![1, -1, 0, 0, 1, -1]);
//! let Scale::PerTensor(gamma) = *w.scale() else { unreachable!() };
//! assert!((gamma - 0.675).abs() < 1e-6);
//!
//! // y = (x . Wtᵀ) * gamma for one token: both rows dot to -1.
//! let x = [1.0f32, 2.0, 3.0];
//! let mut y = [0f32; 2];
//! cpu::reference::gemm(&w, &x, 1, None, &mut y)?;
//! assert_eq!(y, [-gamma, -gamma]);
//!
//! // The packed words are the old project's `pack_ternary` layout (I2).
//! let w = TernaryMatrix::from_ternary(1, 2, &[1, -1], Scale::None)?;
//! assert_eq!(w.words(), &[0b10_01]);
//! # Ok::<(), warp_bitnet::Error>(())
//! ```
//!
//! Modules: [`engine`] (whole-model inference), [`format`] (packed layouts), [`import`] (other projects' layouts), [`quant`] (quantizers), [`cpu`] (reference
//! kernels), `cuda` (GPU kernels, feature `cuda`), [`bench`] (benchmark harness).
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod bench;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dtype;
pub mod engine;
mod error;
pub mod format;
mod gguf;
pub mod import;
pub mod io;
pub mod quant;

pub use dtype::{Activation, DType};
pub use error::{Error, Result};
pub use format::{Int2Matrix, Levels, PackedWeights, Scale, TernaryMatrix};
