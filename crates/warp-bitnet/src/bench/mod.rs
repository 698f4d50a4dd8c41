//! Benchmark harness: the model shapes every benchmark uses, one row schema, and
//! the CPU and CUDA runners.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use serde::Serialize;

/// A weight shape from a real model: `rows` (out features) x `cols` (in features).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Model and layer, e.g. `llama3-70b gate/up`.
    pub name: &'static str,
    /// Output features (M).
    pub rows: usize,
    /// Input features (N).
    pub cols: usize,
}

const fn s(name: &'static str, rows: usize, cols: usize) -> Shape {
    Shape { name, rows, cols }
}

/// The benchmark shapes (M x N = out x in), largest models first.
pub const SHAPES: &[Shape] = &[
    s("llama3-70b q/o", 8192, 8192),
    s("llama3-70b gate/up", 28672, 8192),
    s("llama3-70b down", 8192, 28672),
    s("qwen2.5-72b gate/up", 29568, 8192),
    s("llama3-8b qkv/o", 4096, 4096),
    s("llama3-8b gate/up", 14336, 4096),
    s("llama3-8b down", 4096, 14336),
    s("deepseek-v2 expert", 11008, 4096),
    s("bitnet-2b q/o", 2560, 2560),
    s("bitnet-2b k/v", 640, 2560),
    s("bitnet-2b gate/up", 6912, 2560),
    s("bitnet-2b down", 2560, 6912),
];

/// One benchmark measurement; the JSON schema of `warp-bitnet bench --json`.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRow {
    /// Shape name.
    pub shape: String,
    /// Output features (M).
    pub rows: usize,
    /// Input features (N).
    pub cols: usize,
    /// Tokens per call (B).
    pub batch: usize,
    /// Weight format, e.g. `i2` (CPU) or `t2` (GPU).
    pub format: String,
    /// Activation type of our kernel, e.g. `f16` or `i8`.
    pub activation: String,
    /// `cpu` or `cuda`.
    pub backend: String,
    /// Device name.
    pub device: String,
    /// Our median time, microseconds.
    pub time_us: f64,
    /// What the baseline is, e.g. `cublas-f16`.
    pub baseline: String,
    /// Baseline median time, microseconds.
    pub baseline_us: f64,
    /// `baseline_us / time_us`.
    pub speedup: f64,
    /// Bytes our kernel must move (weights + activations + outputs) over its time, GB/s.
    pub gbps: f64,
    /// `gbps` as a percentage of the copy bandwidth measured in the same run (0 if not measured).
    pub pct_copy_bw: f64,
    /// Our median time per call when calls run back to back (0 if not measured), µs.
    pub stream_us: f64,
    /// The baseline's, likewise.
    pub baseline_stream_us: f64,
    /// `baseline_stream_us / stream_us` (0 if not measured).
    pub stream_speedup: f64,
    /// Bandwidth back to back as a percentage of the copy bandwidth (0 if not measured).
    pub stream_pct_copy_bw: f64,
    /// Max over outputs of `|ours - ref| / max|ref|`, against a float64 reference.
    pub max_rel_err: f64,
    /// The kernel that ran and its launch shape (CUDA; see `Gpu::gemm_kernel`).
    pub kernel: String,
}

/// Median of a non-empty sample (sorted in place).
pub fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        0.5 * (samples[n / 2 - 1] + samples[n / 2])
    }
}

/// Random ternary weights with P(-1) = P(0) = P(+1) = 1/3 and random per-row scales in
/// [0.5, 1.5); rows are generated in parallel, each from its own seeded generator.
///
/// # Panics
/// If `rows` or `cols` is 0 (a benchmark and test helper).
pub fn random_matrix(rng: &mut impl rand::Rng, rows: usize, cols: usize) -> crate::TernaryMatrix {
    use rand::{Rng, SeedableRng};
    use rayon::prelude::*;
    let seed: u64 = rng.random();
    let wpr = crate::format::i2::words_per_row(cols);
    let mut words = vec![0u32; rows * wpr];
    words.par_chunks_mut(wpr).enumerate().for_each(|(r, row)| {
        let mut g = rand::rngs::StdRng::seed_from_u64(
            seed ^ (r as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        for c in 0..cols {
            row[c / 16] |= crate::format::i2::encode(g.random_range(-1..=1)) << (2 * (c % 16));
        }
    });
    let scale = (0..rows).map(|_| rng.random_range(0.5..1.5)).collect();
    crate::TernaryMatrix::from_words(rows, cols, words, crate::Scale::PerRow(scale))
        .expect("valid by construction")
}

/// Random INT2 weights (the four codes equally likely) with per-row scales in [0.5, 1.5).
///
/// # Panics
/// If `rows` or `cols` is 0 (a benchmark and test helper).
pub fn random_int2_matrix(rng: &mut impl rand::Rng, rows: usize, cols: usize) -> crate::Int2Matrix {
    let codes: Vec<u8> = (0..rows * cols).map(|_| rng.random_range(0..4)).collect();
    let scale = (0..rows).map(|_| rng.random_range(0.5..1.5)).collect();
    crate::Int2Matrix::from_codes(rows, cols, &codes, crate::Scale::PerRow(scale))
        .expect("valid by construction")
}

/// Max over `got` of `|got - want| / max|want|`; a NaN or infinite output (e.g. a
/// poisoned element that was never written) makes it infinite.
pub fn max_rel_err(got: impl Iterator<Item = f64>, want: &[f64]) -> f64 {
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(v.abs()))
        .max(f64::MIN_POSITIVE);
    got.zip(want).fold(0f64, |m, (g, w)| {
        let e = (g - w).abs() / scale;
        if e.is_nan() {
            f64::INFINITY
        } else {
            m.max(e)
        }
    })
}

/// `y[b, r] = sum_k x[b, k] * w[r, k] * scale[r] (+ bias[r])` in float64: the oracle.
pub fn reference_f64<W: crate::PackedWeights>(
    w: &W,
    x: &[f64],
    batch: usize,
    bias: Option<&[f64]>,
) -> Vec<f64> {
    use rayon::prelude::*;
    let (rows, cols) = (w.rows(), w.cols());
    let mut by_row = vec![0f64; rows * batch];
    by_row.par_chunks_mut(batch).enumerate().for_each_init(
        || vec![0i8; cols],
        |wrow, (r, out)| {
            w.unpack_row_into(r, wrow);
            for (b, o) in out.iter_mut().enumerate() {
                let xb = &x[b * cols..(b + 1) * cols];
                let dot: f64 = wrow.iter().zip(xb).map(|(&a, &v)| f64::from(a) * v).sum();
                let scale = f64::from(W::UNIT) * f64::from(w.scale().of_row(r));
                *o = dot * scale + bias.map_or(0.0, |bv| bv[r]);
            }
        },
    );
    let mut y = vec![0f64; batch * rows];
    for r in 0..rows {
        for b in 0..batch {
            y[b * rows + r] = by_row[r * batch + b];
        }
    }
    y
}
