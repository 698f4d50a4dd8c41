//! CUDA benchmark: our kernels against cuBLAS in the same process, on the same stream.
//!
//! Method (docs/NOTES.md): weights rotate among enough copies to exceed 4x the L2
//! size, so every call reads them from HBM (L2-cold); each call is timed with its own
//! pair of CUDA events after a warm-up, and the median is reported. The timed calls
//! are queued behind a kernel that holds the stream until all are queued (nvbench's
//! blocking kernel), so host-side launch time never shows up as GPU time: without
//! it small shapes scattered by up to 2x between runs. Each call is also timed back to
//! back, as a decode loop or a CUDA graph runs it: groups of calls between two
//! events, the median per call. The device-to-device
//! copy bandwidth is measured in the same run and each row reports its effective
//! bandwidth as a percentage of it. Every kernel's output is checked against a
//! float64 reference on the same random data before it is timed (beyond 64 tokens, on 64
//! tokens spread over the batch: `CHECKED_TOKENS`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use cudarc::cublas::CudaBlas;
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaSlice, CudaStream};
use half::{bf16, f16};
use rand::Rng;
use rayon::prelude::*;
use serde::Serialize;

use super::{
    max_rel_err, median, random_int2_matrix, random_matrix, reference_f64, BenchRow, Shape,
};
use crate::cuda::bench_aids::{poison, StreamHold};
use crate::cuda::blas::gemm_slices;
use crate::cuda::{gemm_symbol, Cta, Gpu, SplitKernels, Staging};
use crate::error::Result;
use crate::DType;
use crate::PackedWeights;

/// Facts about the run that every row shares.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    /// GPU name.
    pub gpu: String,
    /// Compute capability, e.g. "9.0".
    pub compute_capability: String,
    /// Driver version, e.g. "13.0".
    pub driver: String,
    /// Multiprocessors.
    pub sm_count: usize,
    /// L2 bytes.
    pub l2_bytes: usize,
    /// Device-to-device copy bandwidth (bytes read + written), GB/s.
    pub copy_gbps: f64,
    /// Timed iterations per measurement.
    pub iters: usize,
    /// When the split-K cluster kernels were taken (sm_90+, 9+ tokens): never, auto, always.
    pub split_kernels: String,
    /// Whether the split and prefill kernels used wgmma (sm_90a) rather than mma.sync.
    pub wgmma: bool,
    /// Whether batches beyond 64 tokens took the prefill kernels.
    pub prefill: bool,
}

/// Host time to queue one call, generously (events and a launch or two): the hold
/// per timed call.
const HOLD_PER_CALL: Duration = Duration::from_micros(40);

/// Benchmark state: one GPU, one stream, one cuBLAS handle.
pub struct CudaBench {
    gpu: Gpu,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    hold: StreamHold,
    iters: usize,
    /// Copy bandwidth measured at start-up, GB/s.
    pub info: RunInfo,
}

impl CudaBench {
    /// Opens device 0, measures the copy bandwidth. `split`, `wgmma` and `prefill`: see
    /// [`Gpu::set_split_kernels`], [`Gpu::set_wgmma`] and [`Gpu::set_prefill`].
    pub fn new(iters: usize, split: SplitKernels, wgmma: bool, prefill: bool) -> Result<Self> {
        let mut gpu = Gpu::new(0)?;
        gpu.set_split_kernels(split);
        gpu.set_wgmma(wgmma);
        gpu.set_prefill(prefill);
        // The bench times the ternary kernels against cuBLAS: no dense route for them.
        gpu.set_dense(false);
        let stream = gpu.context().new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        let i = gpu.info().clone();
        let hold = StreamHold::new(&gpu)?;
        let info = RunInfo {
            gpu: i.name,
            compute_capability: format!("{}.{}", i.compute_capability.0, i.compute_capability.1),
            driver: format!("{}.{}", i.driver_version.0, i.driver_version.1),
            sm_count: i.sm_count,
            l2_bytes: i.l2_bytes,
            copy_gbps: 0.0,
            iters,
            split_kernels: format!("{split:?}").to_lowercase(),
            wgmma: gpu.wgmma(),
            prefill: gpu.prefill(),
        };
        let mut bench = Self {
            gpu,
            stream,
            blas,
            hold,
            iters,
            info,
        };
        bench.info.copy_gbps = bench.copy_bandwidth()?;
        Ok(bench)
    }

    /// Median GB/s (read + write) of a 1 GiB device-to-device copy.
    fn copy_bandwidth(&self) -> Result<f64> {
        let n = 1usize << 30;
        let src = self.stream.alloc_zeros::<u8>(n)?;
        let mut dst = self.stream.alloc_zeros::<u8>(n)?;
        let t = self.time(1, &mut |_| Ok(self.stream.memcpy_dtod(&src, &mut dst)?))?;
        Ok(2.0 * n as f64 / t.alone_us / 1e3)
    }

    /// Median microseconds of `f(i)`, `i` cycling over `copies` weight copies: each
    /// call alone, and per call of a group of back-to-back calls.
    fn time(&self, copies: usize, f: &mut dyn FnMut(usize) -> Result<()>) -> Result<Timing> {
        // Warm-up: a count of calls, and at least WARMUP of GPU time, so that clocks
        // have settled before the first timed call (small shapes scattered by up to 2x
        // between runs with a count alone).
        let (mut warmup, start) = (0, Instant::now());
        while warmup < (self.iters / 10).max(copies.min(self.iters)).max(5)
            || start.elapsed() < WARMUP
        {
            f(warmup % copies)?;
            warmup += 1;
            if warmup % 16 == 0 {
                self.stream.synchronize()?;
            }
        }
        let ctx = self.gpu.context();
        let flag = Some(CUevent_flags::CU_EVENT_DEFAULT);
        let events = (0..self.iters)
            .map(|_| Ok((ctx.new_event(flag)?, ctx.new_event(flag)?)))
            .collect::<Result<Vec<_>>>()?;
        self.behind_hold(self.iters, &mut || {
            for (i, (start, end)) in events.iter().enumerate() {
                start.record(&self.stream)?;
                f((warmup + i) % copies)?;
                end.record(&self.stream)?;
            }
            Ok(())
        })?;
        let mut us = events
            .iter()
            .map(|(s, e)| Ok(f64::from(s.elapsed_ms(e)?) * 1e3))
            .collect::<Result<Vec<_>>>()?;
        let alone_us = median(&mut us);

        let groups = &events[..(self.iters / GROUP).max(5).min(events.len())];
        let mut next = warmup + self.iters;
        self.behind_hold(groups.len() * GROUP, &mut || {
            for (start, end) in groups {
                start.record(&self.stream)?;
                for _ in 0..GROUP {
                    f(next % copies)?;
                    next += 1;
                }
                end.record(&self.stream)?;
            }
            Ok(())
        })?;
        let mut us = groups
            .iter()
            .map(|(s, e)| Ok(f64::from(s.elapsed_ms(e)?) * 1e3 / GROUP as f64))
            .collect::<Result<Vec<_>>>()?;
        Ok(Timing {
            alone_us,
            stream_us: median(&mut us),
        })
    }

    /// Runs `queue` (which queues `calls` calls) behind a hold and waits for the GPU.
    /// If the hold ended before the host had queued them all, the GPU waited on the
    /// host in between: again, with the hold doubled (a host that stalled once
    /// turned one median of 200 calls from 9 into 37 µs).
    fn behind_hold(&self, calls: usize, queue: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let mut per_call = HOLD_PER_CALL;
        loop {
            self.hold(per_call * calls as u32)?;
            let released = self.stream.record_event(None)?;
            queue()?;
            let covered = !released.try_is_complete()?;
            self.stream.synchronize()?;
            if covered || per_call >= 16 * HOLD_PER_CALL {
                if !covered {
                    eprintln!("warning: the host queued calls slower than the hold; times may include host time");
                }
                return Ok(());
            }
            per_call *= 2;
        }
    }

    /// Holds the stream for `time`.
    fn hold(&self, time: Duration) -> Result<()> {
        self.hold.hold(&self.stream, time)
    }

    /// Copies needed so that rotating among them moves more than 4x the L2 size.
    fn copies_for(&self, bytes: usize) -> usize {
        (4 * self.info.l2_bytes).div_ceil(bytes.max(1)) + 1
    }

    /// All rows for one shape and batch size: cuBLAS f16 and bf16, then our kernels on
    /// ternary (`t2`) and INT2 weights of that shape.
    pub fn run_shape(
        &self,
        shape: Shape,
        batch: usize,
        rng: &mut impl Rng,
    ) -> Result<Vec<BenchRow>> {
        let (rows, cols) = (shape.rows, shape.cols);
        let s = &self.stream;
        let w = random_matrix(rng, rows, cols);
        let xf: Vec<f32> = (0..batch * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        let x16: Vec<f16> = xf.iter().map(|&v| f16::from_f32(v)).collect();
        let xb16: Vec<bf16> = xf.iter().map(|&v| bf16::from_f32(v)).collect();
        let acts = Acts {
            x_h: s.clone_htod(&x16)?,
            x_b: s.clone_htod(&xb16)?,
            x16,
            xb16,
        };

        // ---- cuBLAS baselines on the dense W * scale, rotated ----
        let dense_f16: Vec<f16> = dense(&w, f16::from_f32);
        let dense_bf16: Vec<bf16> = dense(&w, bf16::from_f32);
        let blas_copies = self.copies_for(dense_f16.len() * 2);
        let mut y_h = s.alloc_zeros::<f16>(batch * rows)?;
        let mut y_b = s.alloc_zeros::<bf16>(batch * rows)?;
        let t_blas_h = {
            let d = self.replicate(&dense_f16, blas_copies)?;
            self.time(blas_copies, &mut |i| {
                gemm_slices(
                    &self.blas,
                    s,
                    &d[i],
                    &acts.x_h,
                    &mut y_h,
                    (rows, cols, batch),
                )
            })?
        };
        let t_blas_b = {
            let d = self.replicate(&dense_bf16, blas_copies)?;
            self.time(blas_copies, &mut |i| {
                gemm_slices(
                    &self.blas,
                    s,
                    &d[i],
                    &acts.x_b,
                    &mut y_b,
                    (rows, cols, batch),
                )
            })?
        };
        drop((dense_f16, dense_bf16));
        let base = Baseline {
            shape,
            batch,
            f16: t_blas_h,
            bf16: t_blas_b,
        };
        let mut out = self.ours(&w, "t2", &acts, &base)?;
        out.extend(self.ours(&random_int2_matrix(rng, rows, cols), "int2", &acts, &base)?);
        Ok(out)
    }

    /// Our rows for weights `w` (reported as `format`): f16, bf16, int8, and the
    /// f16 -> int8 quantizer followed by the int8 GEMM.
    fn ours<W: PackedWeights>(
        &self,
        w: &W,
        format: &str,
        acts: &Acts,
        base: &Baseline,
    ) -> Result<Vec<BenchRow>> {
        let (rows, cols, batch) = (w.rows(), w.cols(), base.batch);
        let s = &self.stream;
        let first = self.gpu.upload(w, s)?;
        let ours_copies = self.copies_for(first.tiled_bytes());
        let mut ws = vec![first];
        for _ in 1..ours_copies {
            ws.push(ws[0].try_clone()?);
        }
        let mut y_h = s.alloc_zeros::<f16>(batch * rows)?;
        let mut y_b = s.alloc_zeros::<bf16>(batch * rows)?;
        let mut q = s.alloc_zeros::<i8>(batch * cols)?;
        let mut qs = s.alloc_zeros::<f32>(batch)?;
        let (x_h, x_b) = (&acts.x_h, &acts.x_b);

        let mut out = Vec::new();
        let bytes = |wbytes: usize, xsz: usize, ysz: usize| {
            (wbytes + batch * (cols * xsz + rows * ysz)) as f64
        };
        let kernel = |x: DType, y: DType| self.gpu.gemm_kernel(&ws[0], x, y, batch);
        let row = |act: &str,
                   base_name: &str,
                   t: Timing,
                   tb: Timing,
                   b: f64,
                   err: f64,
                   kernel: String| BenchRow {
            shape: base.shape.name.into(),
            rows,
            cols,
            batch,
            format: format.into(),
            activation: act.into(),
            backend: "cuda".into(),
            device: self.info.gpu.clone(),
            time_us: t.alone_us,
            baseline: base_name.into(),
            baseline_us: tb.alone_us,
            speedup: tb.alone_us / t.alone_us,
            gbps: b / t.alone_us / 1e3,
            pct_copy_bw: 100.0 * (b / t.alone_us / 1e3) / self.info.copy_gbps,
            stream_us: t.stream_us,
            baseline_stream_us: tb.stream_us,
            stream_speedup: tb.stream_us / t.stream_us,
            stream_pct_copy_bw: 100.0 * (b / t.stream_us / 1e3) / self.info.copy_gbps,
            max_rel_err: err,
            kernel,
        };
        // Float64 references on the rounded activations, for the checked tokens.
        let checked = checked_tokens(batch);
        let half = |v: f16| f64::from(v.to_f32());
        let brain = |v: bf16| f64::from(v.to_f32());
        let reference = |x: Vec<f64>| reference_f64(w, &x, checked.len(), None);
        let got = |y: &[f16]| tokens_of(y, &checked, rows, half).into_iter();
        let want16 = reference(tokens_of(&acts.x16, &checked, cols, half));
        let wantb16 = reference(tokens_of(&acts.xb16, &checked, cols, brain));

        // ---- W2A16 ----
        poison(s, &mut y_h)?;
        self.gpu.gemm(&ws[0], x_h, batch, None, &mut y_h, s)?;
        let err = max_rel_err(got(&s.clone_dtoh(&y_h)?), &want16);
        let t = self.time(ours_copies, &mut |i| {
            self.gpu.gemm(&ws[i], x_h, batch, None, &mut y_h, s)
        })?;
        out.push(row(
            "f16",
            "cublas-f16",
            t,
            base.f16,
            bytes(ws[0].tiled_bytes(), 2, 2),
            err,
            kernel(DType::F16, DType::F16)?,
        ));

        poison(s, &mut y_b)?;
        self.gpu.gemm(&ws[0], x_b, batch, None, &mut y_b, s)?;
        let yb = tokens_of(&s.clone_dtoh(&y_b)?, &checked, rows, brain);
        let err = max_rel_err(yb.into_iter(), &wantb16);
        let t = self.time(ours_copies, &mut |i| {
            self.gpu.gemm(&ws[i], x_b, batch, None, &mut y_b, s)
        })?;
        out.push(row(
            "bf16",
            "cublas-bf16",
            t,
            base.bf16,
            bytes(ws[0].tiled_bytes(), 2, 2),
            err,
            kernel(DType::BF16, DType::BF16)?,
        ));

        // ---- W2A8: quantize on the device, then the int8 GEMM ----
        self.gpu.quantize_i8(x_h, batch, cols, &mut q, &mut qs, s)?;
        let (qh, qsh) = (s.clone_dtoh(&q)?, s.clone_dtoh(&qs)?);
        let deq = checked
            .iter()
            .flat_map(|&t| {
                let scale = f64::from(qsh[t]);
                qh[t * cols..(t + 1) * cols]
                    .iter()
                    .map(move |&v| f64::from(v) * scale)
            })
            .collect();
        let want8 = reference(deq);
        poison(s, &mut y_h)?;
        self.gpu
            .gemm_w2a8(&ws[0], &q, &qs, batch, None, &mut y_h, s)?;
        let err = max_rel_err(got(&s.clone_dtoh(&y_h)?), &want8);
        let t = self.time(ours_copies, &mut |i| {
            self.gpu
                .gemm_w2a8(&ws[i], &q, &qs, batch, None, &mut y_h, s)
        })?;
        out.push(row(
            "i8",
            "cublas-f16",
            t,
            base.f16,
            bytes(ws[0].tiled_bytes(), 1, 2),
            err,
            kernel(DType::I8, DType::F16)?,
        ));
        // The combined path, checked on its own output first (same activations, same q).
        poison(s, &mut y_h)?;
        self.gpu.quantize_i8(x_h, batch, cols, &mut q, &mut qs, s)?;
        self.gpu
            .gemm_w2a8(&ws[0], &q, &qs, batch, None, &mut y_h, s)?;
        let err = max_rel_err(got(&s.clone_dtoh(&y_h)?), &want8);
        let t = self.time(ours_copies, &mut |i| {
            self.gpu.quantize_i8(x_h, batch, cols, &mut q, &mut qs, s)?;
            self.gpu
                .gemm_w2a8(&ws[i], &q, &qs, batch, None, &mut y_h, s)
        })?;
        out.push(row(
            "f16>i8",
            "cublas-f16",
            t,
            base.f16,
            bytes(ws[0].tiled_bytes(), 2, 2),
            err,
            format!("quantize_i8 + {}", kernel(DType::I8, DType::F16)?),
        ));
        // One token: the kernel that quantizes its own activations (one launch).
        if batch == 1 {
            poison(s, &mut y_h)?;
            self.gpu.gemv_quantized(&ws[0], x_h, None, &mut y_h, s)?;
            let err = max_rel_err(got(&s.clone_dtoh(&y_h)?), &want8);
            let t = self.time(ours_copies, &mut |i| {
                self.gpu.gemv_quantized(&ws[i], x_h, None, &mut y_h, s)
            })?;
            out.push(row(
                "f16q",
                "cublas-f16",
                t,
                base.f16,
                bytes(ws[0].tiled_bytes(), 2, 2),
                err,
                gemm_symbol(
                    ws[0].levels(),
                    DType::F16,
                    Staging::Quantized,
                    DType::F16,
                    Cta::Single,
                ),
            ));
        }
        Ok(out)
    }

    fn replicate<T: cudarc::driver::DeviceRepr>(
        &self,
        host: &[T],
        copies: usize,
    ) -> Result<Vec<CudaSlice<T>>> {
        let first = self.stream.clone_htod(host)?;
        let mut v = Vec::with_capacity(copies);
        for _ in 1..copies {
            v.push(first.try_clone()?);
        }
        v.push(first);
        Ok(v)
    }
}

/// Tokens whose outputs are checked against float64 references: every one up to
/// `CHECKED_TOKENS`, else that many spread evenly from the first to the last (every token
/// of a 2048-token batch would take the CPU minutes per shape).
const CHECKED_TOKENS: usize = 64;

fn checked_tokens(batch: usize) -> Vec<usize> {
    if batch <= CHECKED_TOKENS {
        return (0..batch).collect();
    }
    (0..CHECKED_TOKENS)
        .map(|i| i * (batch - 1) / (CHECKED_TOKENS - 1))
        .collect()
}

/// Rows `tokens` of the row-major `[_, width]` matrix `v`, as f64.
fn tokens_of<T: Copy>(
    v: &[T],
    tokens: &[usize],
    width: usize,
    f64_of: impl Fn(T) -> f64,
) -> Vec<f64> {
    tokens
        .iter()
        .flat_map(|&t| &v[t * width..(t + 1) * width])
        .map(|&x| f64_of(x))
        .collect()
}

/// One shape's activations, on the host (for the references) and on the device.
struct Acts {
    x16: Vec<f16>,
    xb16: Vec<bf16>,
    x_h: CudaSlice<f16>,
    x_b: CudaSlice<bf16>,
}

/// The least GPU time spent on warm-up calls before timing (`CudaBench::time`).
const WARMUP: Duration = Duration::from_millis(30);

/// Calls back to back per timed group (`CudaBench::time`).
const GROUP: usize = 20;

/// Median microseconds per call: alone, and back to back.
#[derive(Clone, Copy, Debug)]
struct Timing {
    alone_us: f64,
    stream_us: f64,
}

/// One shape's cuBLAS times.
struct Baseline {
    shape: Shape,
    batch: usize,
    f16: Timing,
    bf16: Timing,
}

/// Dense row-major `W * scale`, converted per element.
fn dense<T: Send + Copy + Default>(w: &crate::TernaryMatrix, conv: fn(f32) -> T) -> Vec<T> {
    let cols = w.cols();
    let mut d = vec![T::default(); w.rows() * cols];
    d.par_chunks_mut(cols).enumerate().for_each_init(
        || vec![0i8; cols],
        |wrow, (r, out)| {
            w.unpack_row_into(r, wrow);
            let s = w.scale().of_row(r);
            for (o, &v) in out.iter_mut().zip(wrow.iter()) {
                *o = conv(f32::from(v) * s);
            }
        },
    );
    d
}
