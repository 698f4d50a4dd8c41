//! The fast CPU kernels' algorithm, shared by every instruction set: rows split across
//! threads, each thread walking its rows in chunks and the tokens in tiles of up to
//! [`MAX_TILE`], one micro-kernel call per (row, tile), then the epilogue.
//!
//! At batch 1 this is a GEMV streaming each C2 row once. For prefill batches the row chunk
//! ([`ROW_CHUNK`] rows, ~20 KB of C2 weights at 2560 columns) stays in L1/L2 while every
//! token tile passes over it, and each tile's activations (4 x 2560 bytes for int8) stay in
//! L1 across the chunk's rows: a blocked GEMM whose decode is shared by the tile's tokens.

use super::arch::{Isa, Micro, Tile, MAX_PAIRS, MAX_TILE};
use super::layout::CpuMatrix;
use super::pool::{resolve_threads, run_parts};
use crate::dtype::Activation;
use crate::error::{check_len, Error, Result};
use crate::format::Levels;

/// Rows per chunk of the blocked loop (a multiple of 16, so threads' output slices start on
/// 64-byte boundaries of an f32 output).
pub const ROW_CHUNK: usize = 32;

/// The fast CPU kernels of one instruction set.
#[derive(Clone, Copy, Debug)]
pub struct Kernels {
    micro: Micro,
}

impl Kernels {
    /// The best instruction set of this CPU, or the one `WARP_BITNET_CPU_ISA` names.
    pub fn detect() -> Result<Kernels> {
        Kernels::new(Isa::detect()?)
    }

    /// The kernels of `isa`; an error if this CPU cannot run it.
    pub fn new(isa: Isa) -> Result<Kernels> {
        let micro = Micro::new(isa.require()?).expect("required above");
        Ok(Kernels { micro })
    }

    /// The instruction set these kernels run.
    pub fn isa(&self) -> Isa {
        self.micro.isa()
    }

    /// Float activations: `y[b, r] = T(sum_k x[b, k] * w[r, k] * scale[r] + bias[r])`, `x`
    /// `[batch, cols]`, `y` `[batch, rows]` row-major, like [`crate::cpu::reference::gemm`].
    ///
    /// Accumulates in `f32` in a different order than the reference: each output is within
    /// `2 * cols * 2^-24 * sum_k |x[b, k] * w[r, k] * scale[r]|` of it before the final
    /// rounding to `T`. `threads == 0` takes [`crate::cpu::default_threads`].
    pub fn gemm<T: Activation>(
        &self,
        w: &CpuMatrix,
        x: &[T],
        batch: usize,
        bias: Option<&[T]>,
        y: &mut [T],
        threads: usize,
    ) -> Result<()> {
        super::check_io(
            (w.rows(), w.cols()),
            x.len(),
            batch,
            bias.map(<[T]>::len),
            y.len(),
        )?;
        let kp = w.padded_cols();
        let mut xf = vec![0f32; batch * kp];
        for (dst, src) in xf.chunks_mut(kp).zip(x.chunks(w.cols())) {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_f32();
            }
        }
        let (a, b) = w.decode();
        let ab = (a as f32, b as f32);
        let (unit, scale) = (w.unit(), w.row_scales());
        let micro = self.micro;
        let rb = kp / 4;
        run(
            w,
            batch,
            threads,
            y,
            |rows, tile, t0, acc: &mut [f32]| {
                let nt = tile.tokens;
                for i in 0..tile.rows {
                    let (row, acc) = (&rows[i * rb..(i + 1) * rb], &mut acc[i * nt..(i + 1) * nt]);
                    micro.row_f32(row, &xf[t0 * kp..], kp, ab, acc);
                }
            },
            |r, _, acc| T::from_f32(acc * unit * scale[r] + bias.map_or(0.0, |bv| bv[r].to_f32())),
        )
    }

    /// Exact `acc[b, r] = sum_k q[b, k] * w[r, k]` (`w` the decoded integers, for INT2
    /// twice the levels), like [`crate::cpu::reference::gemm_i8_accumulate`].
    pub fn accumulate_i8(
        &self,
        w: &CpuMatrix,
        q: &[i8],
        batch: usize,
        acc: &mut [i32],
        threads: usize,
    ) -> Result<()> {
        super::check_io((w.rows(), w.cols()), q.len(), batch, None, acc.len())?;
        check_w2a8_cols(w)?;
        let (xq, sums) = pad_i8(w, q, batch);
        let micro = self.micro;
        let kp = w.padded_cols();
        let (a, b) = w.decode();
        run(
            w,
            batch,
            threads,
            acc,
            |rows, tile, t0, acc: &mut [i32]| {
                micro.tile_i8(rows, kp / 4, tile, &xq[t0 * kp..], kp, acc);
                correct_tile(acc, (a, b), &sums[t0..], tile);
            },
            |_, _, v| v,
        )
    }

    /// W2A8: `y[b, r] = T(acc[b, r] * x_scale[b] * scale[r] + bias[r])` with `acc` as in
    /// [`Kernels::accumulate_i8`]: bit for bit [`crate::cpu::reference::gemm_w2a8`].
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_w2a8<T: Activation>(
        &self,
        w: &CpuMatrix,
        q: &[i8],
        x_scale: &[f32],
        batch: usize,
        bias: Option<&[T]>,
        y: &mut [T],
        threads: usize,
    ) -> Result<()> {
        super::check_io(
            (w.rows(), w.cols()),
            q.len(),
            batch,
            bias.map(<[T]>::len),
            y.len(),
        )?;
        check_len("x_scale", batch, x_scale.len())?;
        check_w2a8_cols(w)?;
        let (xq, sums) = pad_i8(w, q, batch);
        let micro = self.micro;
        let kp = w.padded_cols();
        let ab = w.decode();
        let (unit, scale) = (w.unit(), w.row_scales());
        run(
            w,
            batch,
            threads,
            y,
            |rows, tile, t0, acc: &mut [i32]| {
                micro.tile_i8(rows, kp / 4, tile, &xq[t0 * kp..], kp, acc);
                correct_tile(acc, ab, &sums[t0..], tile);
            },
            // The reference's operation order, so the result is the same bits.
            |r, b, acc| {
                let bv = bias.map_or(0.0, |bv| bv[r].to_f32());
                T::from_f32((acc as f32 * unit * x_scale[b]) * scale[r] + bv)
            },
        )
    }
}

/// `sum_k (a * u_k + b) * q_k` from `sum_k u_k * q_k` and `sum_k q_k`. Wrapping is exact:
/// the true value fits an i32 (`check_w2a8_cols`), and arithmetic mod 2^32 lands on it.
#[inline]
fn correct(sum_uq: i32, (a, b): (i32, i32), sum_q: i32) -> i32 {
    a.wrapping_mul(sum_uq).wrapping_add(b.wrapping_mul(sum_q))
}

/// [`correct`] on a tile's `acc[r * tile.tokens + t]`, token `t` with sum `sums[t]`.
fn correct_tile(acc: &mut [i32], ab: (i32, i32), sums: &[i32], tile: Tile) {
    for row in acc.chunks_mut(tile.tokens) {
        for (v, &s) in row.iter_mut().zip(sums) {
            *v = correct(*v, ab, s);
        }
    }
}

/// The activations padded to whole blocks with zeros, and each token's sum.
fn pad_i8(w: &CpuMatrix, q: &[i8], batch: usize) -> (Vec<i8>, Vec<i32>) {
    let kp = w.padded_cols();
    let mut xq = vec![0i8; batch * kp];
    let mut sums = Vec::with_capacity(batch);
    for (dst, src) in xq.chunks_mut(kp).zip(q.chunks(w.cols())) {
        dst[..src.len()].copy_from_slice(src);
        sums.push(src.iter().map(|&v| i32::from(v)).sum());
    }
    (xq, sums)
}

/// The generic algorithm: `tile(bytes of rows r0.., shape, first token t0, acc)` per tile of
/// `nr` rows x `nt` tokens (`acc[i * nt + j]` for row `r0 + i`, token `t0 + j`; the shapes of
/// [`Tile::at`], fewer rows at a chunk's end), then `y[b, r] = epi(r, b, acc)`, rows split
/// across `threads`.
fn run<A, Y>(
    w: &CpuMatrix,
    batch: usize,
    threads: usize,
    y: &mut [Y],
    tile: impl Fn(&[u8], Tile, usize, &mut [A]) + Sync,
    epi: impl Fn(usize, usize, A) -> Y + Sync,
) -> Result<()>
where
    A: Copy + Default,
    Y: Send,
{
    let rows = w.rows();
    let threads = resolve_threads(threads)?;
    let per = rows.div_ceil(threads).div_ceil(16) * 16;
    let ranges: Vec<_> = (0..rows)
        .step_by(per)
        .map(|r0| r0..(r0 + per).min(rows))
        .collect();
    // Each part gets its rows' slice of every token's output row.
    let mut parts: Vec<_> = ranges
        .iter()
        .map(|r| (r.clone(), Vec::with_capacity(batch)))
        .collect();
    for yrow in y.chunks_mut(rows) {
        let mut rest = yrow;
        for (range, outs) in &mut parts {
            let (mine, tail) = rest.split_at_mut(range.len());
            outs.push(mine);
            rest = tail;
        }
    }
    run_parts(parts, |(range, mut outs)| {
        let mut acc = [A::default(); MAX_PAIRS];
        for c0 in range.clone().step_by(ROW_CHUNK) {
            let chunk_end = (c0 + ROW_CHUNK).min(range.end);
            for t0 in (0..batch).step_by(MAX_TILE) {
                let full = Tile::at(MAX_TILE.min(batch - t0));
                let nt = full.tokens;
                let mut r0 = c0;
                while r0 < chunk_end {
                    let nr = full.rows.min(chunk_end - r0);
                    let acc = &mut acc[..nr * nt];
                    let shape = Tile {
                        rows: nr,
                        tokens: nt,
                    };
                    tile(w.rows_bytes(r0..r0 + nr), shape, t0, acc);
                    for (i, accs) in acc.chunks(nt).enumerate() {
                        for (j, &a) in accs.iter().enumerate() {
                            outs[t0 + j][r0 + i - range.start] = epi(r0 + i, t0 + j, a);
                        }
                    }
                    r0 += nr;
                }
            }
        }
    })
}

fn check_w2a8_cols(w: &CpuMatrix) -> Result<()> {
    let limit = match w.levels() {
        Levels::Ternary => <crate::TernaryMatrix as crate::PackedWeights>::MAX_W2A8_COLS,
        Levels::Int2 => <crate::Int2Matrix as crate::PackedWeights>::MAX_W2A8_COLS,
    };
    if w.cols() > limit {
        return Err(Error::TooLarge {
            arg: "cols",
            value: w.cols() as u64,
            limit: limit as u64,
        });
    }
    Ok(())
}

/// The detected kernels ([`Kernels::detect`]) as methods of the matrix: what an engine calls.
impl CpuMatrix {
    /// [`Kernels::gemm`] with the detected kernels.
    pub fn gemm<T: Activation>(
        &self,
        x: &[T],
        batch: usize,
        bias: Option<&[T]>,
        y: &mut [T],
        threads: usize,
    ) -> Result<()> {
        Kernels::detect()?.gemm(self, x, batch, bias, y, threads)
    }

    /// [`Kernels::gemm_w2a8`] with the detected kernels (`q`, `x_scale` from
    /// [`crate::quant::quantize_activations_i8`]).
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_w2a8<T: Activation>(
        &self,
        q: &[i8],
        x_scale: &[f32],
        batch: usize,
        bias: Option<&[T]>,
        y: &mut [T],
        threads: usize,
    ) -> Result<()> {
        Kernels::detect()?.gemm_w2a8(self, q, x_scale, batch, bias, y, threads)
    }
}
