//! Element types of activations and outputs.

use half::{bf16, f16};

/// A run-time element type, as seen by kernels and bindings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 8-bit integer (quantized activations).
    I8,
    /// Signed 32-bit integer (raw W2A8 accumulators).
    I32,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 => 4,
        }
    }

    /// Lower-case name (`f16`, `bf16`, ...), as used in kernel symbols.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::I32 => "i32",
        }
    }
}

/// A floating-point activation type; arithmetic happens in `f32`.
pub trait Activation: Copy + Send + Sync + Default + 'static {
    /// The matching [`DType`].
    const DTYPE: DType;
    /// Widens to `f32` (exact).
    fn to_f32(self) -> f32;
    /// Rounds from `f32` to nearest, ties to even.
    fn from_f32(v: f32) -> Self;
}

impl Activation for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Activation for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Activation for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}
