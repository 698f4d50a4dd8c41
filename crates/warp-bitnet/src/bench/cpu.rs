//! CPU benchmark: the fast kernels ([`crate::cpu::Kernels`]) on ternary and INT2 weights
//! against dense f32 and f16-weight GEMVs of the same weights, with the DRAM copy bandwidth
//! measured in the same run.
//!
//! Weights come from DRAM: each measurement rotates through enough copies of the weights
//! (C2 and dense alike) to exceed [`ROTATE_BYTES`], more than twice a 32 MiB L3.
//!
//! The dense baselines are ours, not a BLAS: `dense-f32` is a row-parallel GEMV whose dot
//! product runs four 8-lane FMA chains (AVX2, detected at run time; 16 auto-vectorized lanes
//! elsewhere: `cpu::arch::dot_f32`), and `dense-f16w` converts f16 weight rows to f32 in 256-element pieces
//! (F16C, detected at run time by the `half` crate) before the same dot. At batch 1 on
//! these shapes both are bound by DRAM, as a BLAS sgemv would be. Batches above 1 run the
//! dense dot per (row, token) with the row cached, which a BLAS sgemm would beat.

use std::time::Instant;

use half::{f16, slice::HalfFloatSliceExt};
use rand::Rng;
use serde::Serialize;

use super::{
    max_rel_err, median, random_int2_matrix, random_matrix, reference_f64, BenchRow, Shape,
};
use crate::cpu::pool::run_parts;
use crate::cpu::{CpuMatrix, Kernels};
use crate::error::Result;
use crate::quant::quantize_activations_i8;
use crate::PackedWeights;

/// Bytes of weight copies each measurement rotates through, so none is in cache.
pub const ROTATE_BYTES: usize = 96 << 20;

/// The machine and run settings, written with the rows.
#[derive(Clone, Debug, Serialize)]
pub struct CpuInfo {
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// The SIMD flags the kernels care about, from /proc/cpuinfo.
    pub flags: Vec<String>,
    /// The instruction set the kernels ran.
    pub isa: String,
    /// Threads per call.
    pub threads: usize,
    /// Copy bandwidth measured at the start of the run with `threads` threads, GB/s
    /// (bytes read + bytes written over time).
    pub copy_gbps: f64,
    /// Median per-call overhead of the thread pool with `threads` empty parts, µs.
    pub pool_overhead_us: f64,
    /// The smallest per-call overhead seen, µs (a call no other process interrupted).
    pub pool_overhead_min_us: f64,
    /// Timed iterations per measurement (median taken).
    pub iters: usize,
    /// The 1-minute load average when the run started (other processes share the CPU).
    pub load_average: f64,
}

/// A CPU benchmark session: kernels, thread count and the measured copy bandwidth.
pub struct CpuBench {
    /// The machine and settings.
    pub info: CpuInfo,
    kernels: Kernels,
}

impl CpuBench {
    /// Detects the kernels and measures the copy bandwidth and pool overhead.
    pub fn new(threads: usize, iters: usize) -> Result<CpuBench> {
        let kernels = Kernels::detect()?;
        let threads = crate::cpu::resolve_threads(threads)?;
        let (cpu, flags) = cpu_model_and_flags();
        let (pool_min, pool_median) = pool_overhead_us(threads, 2000)?;
        let info = CpuInfo {
            cpu,
            flags,
            isa: kernels.isa().name().into(),
            threads,
            copy_gbps: copy_bandwidth(threads, 5)?,
            pool_overhead_us: pool_median,
            pool_overhead_min_us: pool_min,
            iters: iters.max(1),
            load_average: load_average(),
        };
        Ok(CpuBench { info, kernels })
    }

    /// Times W2A8 and f32-activation kernels on random ternary and INT2 weights of `shape`
    /// at `batch` tokens, against the dense f32 and f16-weight baselines.
    pub fn run_shape(
        &self,
        shape: Shape,
        batch: usize,
        rng: &mut impl Rng,
    ) -> Result<Vec<BenchRow>> {
        let (rows, cols) = (shape.rows, shape.cols);
        let x: Vec<f32> = (0..batch * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        let ternary = random_matrix(rng, rows, cols);
        let int2 = random_int2_matrix(rng, rows, cols);
        let dense = dense_of(&ternary);
        let base32 = self.time_dense(&dense, &x, batch)?;
        let dense16: Vec<f16> = dense.iter().map(|&v| f16::from_f32(v)).collect();
        drop(dense);
        let base16 = self.time_dense(&dense16, &x, batch)?;
        drop(dense16);
        let mut out = Vec::new();
        for (fmt, row) in [
            ("i2", self.time_format(shape, &ternary, &x, batch)?),
            ("int2", self.time_format(shape, &int2, &x, batch)?),
        ] {
            for (act, t, err, bytes) in row {
                for (name, base) in [("dense-f32", base32), ("dense-f16w", base16)] {
                    if name == "dense-f16w" && (fmt != "i2" || act != "i8") {
                        continue; // one f16 comparison per shape keeps the table short
                    }
                    out.push(self.row(shape, batch, fmt, act, t, (name, base), err, bytes));
                }
            }
        }
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &self,
        shape: Shape,
        batch: usize,
        format: &str,
        act: &str,
        time_us: f64,
        (baseline, baseline_us): (&str, f64),
        err: f64,
        bytes: usize,
    ) -> BenchRow {
        let gbps = bytes as f64 / time_us / 1e3;
        BenchRow {
            shape: shape.name.into(),
            rows: shape.rows,
            cols: shape.cols,
            batch,
            format: format.into(),
            activation: act.into(),
            backend: "cpu".into(),
            device: format!("{}, {} threads", self.info.cpu, self.info.threads),
            time_us,
            baseline: baseline.into(),
            baseline_us,
            speedup: baseline_us / time_us,
            gbps,
            pct_copy_bw: 100.0 * gbps / self.info.copy_gbps,
            stream_us: 0.0,
            baseline_stream_us: 0.0,
            stream_speedup: 0.0,
            stream_pct_copy_bw: 0.0,
            max_rel_err: err,
            kernel: format!(
                "cpu::Kernels::{} ({})",
                if act == "i8" { "gemm_w2a8" } else { "gemm" },
                self.info.isa
            ),
        }
    }

    /// `(activation, median µs, max error, bytes moved)` for W2A8 and f32 activations.
    fn time_format<W: PackedWeights>(
        &self,
        shape: Shape,
        w: &W,
        x: &[f32],
        batch: usize,
    ) -> Result<Vec<(&'static str, f64, f64, usize)>> {
        let (rows, cols, threads) = (shape.rows, shape.cols, self.info.threads);
        let first = CpuMatrix::from(w);
        let copies = rotation(first.packed_bytes());
        let mats: Vec<CpuMatrix> = (0..copies).map(|_| first.clone()).collect();
        let a = quantize_activations_i8(x, batch, cols)?;
        let xd: Vec<f64> =
            a.q.iter()
                .enumerate()
                .map(|(i, &q)| f64::from(q) * f64::from(a.scale[i / cols]))
                .collect();
        let want_q = reference_f64(w, &xd, batch, None);
        let xf: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let want_f = reference_f64(w, &xf, batch, None);
        let mut y = vec![f32::NAN; batch * rows];
        let k = self.kernels;
        let t8 = self.time(copies, &mut |i| {
            k.gemm_w2a8(&mats[i], &a.q, &a.scale, batch, None, &mut y, threads)
        })?;
        let e8 = max_rel_err(y.iter().map(|&v| f64::from(v)), &want_q);
        y.fill(f32::NAN);
        let tf = self.time(copies, &mut |i| {
            k.gemm(&mats[i], x, batch, None, &mut y, threads)
        })?;
        let ef = max_rel_err(y.iter().map(|&v| f64::from(v)), &want_f);
        let io = batch * (rows + cols);
        Ok(vec![
            ("i8", t8, e8, first.packed_bytes() + io * 4),
            ("f32", tf, ef, first.packed_bytes() + io * 8),
        ])
    }

    /// Median µs of the dense baseline on rotating copies of `dense`.
    fn time_dense<E: DenseElem>(&self, dense: &[E], x: &[f32], batch: usize) -> Result<f64> {
        let cols = x.len() / batch;
        let copies = rotation(std::mem::size_of_val(dense));
        let mats: Vec<Vec<E>> = (0..copies).map(|_| dense.to_vec()).collect();
        let mut y = vec![0f32; batch * dense.len() / cols];
        self.time(copies, &mut |i| {
            dense_gemm(&mats[i], x, batch, &mut y, self.info.threads)
        })
    }

    /// Median µs of `f(copy)` over the iterations, after one warm-up pass over every copy.
    fn time(&self, copies: usize, f: &mut dyn FnMut(usize) -> Result<()>) -> Result<f64> {
        for i in 0..copies {
            f(i)?;
        }
        let mut t = Vec::with_capacity(self.info.iters);
        for i in 0..self.info.iters.max(copies) {
            let start = Instant::now();
            f(i % copies)?;
            t.push(start.elapsed().as_secs_f64() * 1e6);
        }
        Ok(median(&mut t))
    }
}

/// Copies of a `bytes`-sized matrix that together exceed [`ROTATE_BYTES`].
pub fn rotation(bytes: usize) -> usize {
    ROTATE_BYTES.div_ceil(bytes.max(1)).clamp(1, 256)
}

/// The ternary weights as dense f32 (`w * scale`), row-major.
fn dense_of<W: PackedWeights>(w: &W) -> Vec<f32> {
    let (rows, cols) = (w.rows(), w.cols());
    let mut dense = vec![0f32; rows * cols];
    let mut wrow = vec![0i8; cols];
    for (r, row) in dense.chunks_mut(cols).enumerate() {
        w.unpack_row_into(r, &mut wrow);
        for (o, &v) in row.iter_mut().zip(&wrow) {
            *o = f32::from(v) * W::UNIT * w.scale().of_row(r);
        }
    }
    dense
}

/// A dense weight element the baselines read: f32, or f16 widened in pieces.
pub trait DenseElem: Copy + Send + Sync {
    /// `sum_k w[k] * x[k]`.
    fn dot(w: &[Self], x: &[f32]) -> f32;
}

impl DenseElem for f32 {
    fn dot(w: &[f32], x: &[f32]) -> f32 {
        dot_f32(w, x)
    }
}

impl DenseElem for f16 {
    fn dot(w: &[f16], x: &[f32]) -> f32 {
        let mut buf = [0f32; 256];
        w.chunks(256)
            .zip(x.chunks(256))
            .map(|(wc, xc)| {
                let b = &mut buf[..wc.len()];
                wc.convert_to_f32_slice(b);
                dot_f32(b, xc)
            })
            .sum()
    }
}

fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    crate::cpu::arch::dot_f32(a, b)
}

/// Dense `y[b, r] = sum_k w[r, k] x[b, k]`, rows split over `threads` like the fast kernels.
pub fn dense_gemm<E: DenseElem>(
    w: &[E],
    x: &[f32],
    batch: usize,
    y: &mut [f32],
    threads: usize,
) -> Result<()> {
    let cols = x.len() / batch;
    let rows = w.len() / cols;
    let per = rows.div_ceil(threads.max(1));
    let mut by_row = vec![0f32; rows * batch];
    let parts: Vec<_> = by_row.chunks_mut(per * batch).enumerate().collect();
    run_parts(parts, |(p, out)| {
        for (i, o) in out.chunks_mut(batch).enumerate() {
            let r = p * per + i;
            let wr = &w[r * cols..(r + 1) * cols];
            for (b, ob) in o.iter_mut().enumerate() {
                *ob = E::dot(wr, &x[b * cols..(b + 1) * cols]);
            }
        }
    })?;
    for r in 0..rows {
        for b in 0..batch {
            y[b * rows + r] = by_row[r * batch + b];
        }
    }
    Ok(())
}

/// Median copy bandwidth (read + write) of 256 MiB with `threads` threads, GB/s.
pub fn copy_bandwidth(threads: usize, iters: usize) -> Result<f64> {
    let n = 32 << 20; // u64s: 256 MiB per buffer
    let src: Vec<u64> = (0..n as u64).collect();
    let mut dst = vec![0u64; n];
    let per = n.div_ceil(threads.max(1));
    let mut t = Vec::new();
    for _ in 0..iters.max(1) + 1 {
        let parts: Vec<_> = dst.chunks_mut(per).zip(src.chunks(per)).collect();
        let start = Instant::now();
        run_parts(parts, |(d, s)| d.copy_from_slice(s))?;
        t.push(start.elapsed().as_secs_f64());
    }
    t.remove(0); // the first pass faults the pages in
    Ok(2.0 * (n * 8) as f64 / median(&mut t) / 1e9)
}

/// `(min, median)` wall time of handing `threads` empty parts to the pool and waiting, µs.
pub fn pool_overhead_us(threads: usize, iters: usize) -> Result<(f64, f64)> {
    let mut t = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = Instant::now();
        run_parts((0..threads).collect(), |i: usize| {
            std::hint::black_box(i);
        })?;
        t.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let min = t.iter().copied().fold(f64::MAX, f64::min);
    Ok((min, median(&mut t)))
}

fn cpu_model_and_flags() -> (String, Vec<String>) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        info.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    };
    let wanted = [
        "avx2",
        "fma",
        "f16c",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
    ];
    let flags = field("flags")
        .unwrap_or_default()
        .split_whitespace()
        .filter(|f| wanted.contains(f))
        .map(String::from)
        .collect();
    (
        field("model name").unwrap_or_else(|| "unknown CPU".into()),
        flags,
    )
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}
