//! x86-64 instantiations of the micro-kernels.

pub mod avx2;
