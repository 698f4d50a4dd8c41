//! AVX2 micro-kernels over the C2 layout (docs/FORMATS.md, "C2").
//!
//! One C2 block is 32 bytes = one `ymm`: plane `p` (bits `2p..2p+1` of every byte) holds the
//! codes of the 32 consecutive columns `32p .. 32p+31`, so `(v >> 2p) & 3` lines up with a
//! plain 32-byte load of the activations and no shuffle is needed.
//!
//! Integer path (`tile_i8`), per block: one shift and four ands decode a row's four planes
//! (shared by the tile's tokens), then per token 4 `vpmaddubsw` (unsigned code x signed
//! int8, pairs summed to i16), one arithmetic shift and 4 adds; a `vpmaddwd` by ones widens
//! to i32 every [`I16_BLOCKS`] blocks. Budget at batch 1: ~14 vector ALU ops per 32 bytes of
//! weights (the first version: 15 plus a widening per block, 21 before that). A tile is up to
//! four rows at one token (one activation load serves the four rows, one reduction ends
//! them), one row at up to four tokens (one decode serves the tokens), or, for prefill, two
//! rows at four tokens (`tile_i8_2x4`, in assembly).
//!
//! Float path: codes widen to i32 (`vpmovzxbd`), a `vpermps` table lookup turns each into
//! its weight `a * u + b`, then one FMA per token; several accumulators per token hide the
//! FMA latency.

use std::arch::asm;
use std::arch::x86_64::*;

use super::super::{Tile, BLOCK, BLOCK_BYTES};

/// See [`crate::cpu::arch::Micro::tile_i8`].
///
/// # Safety
/// The CPU must support AVX2 and FMA; `rows.len() == tile.rows * row_bytes` with `row_bytes`
/// a multiple of 32; `tile` supported ([`Tile::is_supported`]) and `acc.len() ==
/// tile.pairs()`; `x` holds
/// `stride * (tile.tokens - 1) + row_bytes * 4` elements.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn tile_i8(
    rows: &[u8],
    row_bytes: usize,
    tile: Tile,
    x: &[i8],
    stride: usize,
    acc: &mut [i32],
) {
    // SAFETY: the caller's contract is each tile's contract.
    unsafe {
        match (tile.rows, tile.tokens) {
            (1, 1) => tile_i8_rt::<1, 1>(rows, row_bytes, x, stride, acc),
            (2, 1) => tile_i8_rt::<2, 1>(rows, row_bytes, x, stride, acc),
            (3, 1) => tile_i8_rt::<3, 1>(rows, row_bytes, x, stride, acc),
            (4, 1) => tile_i8_rt::<4, 1>(rows, row_bytes, x, stride, acc),
            (1, 2) => tile_i8_rt::<1, 2>(rows, row_bytes, x, stride, acc),
            (2, 2) => tile_i8_rt::<2, 2>(rows, row_bytes, x, stride, acc),
            (1, 3) => tile_i8_rt::<1, 3>(rows, row_bytes, x, stride, acc),
            (1, 4) => tile_i8_rt::<1, 4>(rows, row_bytes, x, stride, acc),
            (2, 4) => tile_i8_2x4(rows, row_bytes, x, stride, acc),
            _ => unreachable!("Micro::tile_i8 admits only supported tiles, not {tile:?}"),
        }
    }
}

/// Blocks whose i16 sums may add up before widening: at most 3072 per block per lane
/// (see `tile_i8_rt`), and 10 * 3072 < 32767.
const I16_BLOCKS: usize = 10;

/// Tiles ahead of the current one whose weights are prefetched: the tile's rows are
/// contiguous, so this is a distance of `PREFETCH_TILES * R * row_bytes` bytes in one stream.
const PREFETCH_TILES: usize = 1;

/// `R` rows x `T` tokens. Per block and row the decode is one shift and four ands: planes 0
/// and 2 are `v & 3` and `(v >> 4) & 3` (the codes `u`), planes 1 and 3 are `v & 12` and
/// `(v >> 4) & 12` (`4u`, at most 12, so `vpmaddubsw` cannot saturate: 2 * 12 * 128 =
/// 3072). Every product of planes 1 and 3 is a multiple of 4, so their sum shifted right by
/// two (arithmetic) is exact: per token 4 `vpmaddubsw`, 4 adds and one shift. A lane gains
/// at most 768 (plane 0) + 768 (plane 2) + 2 * 3072 / 4 (planes 1 and 3) = 3072 per block.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_i8_rt<const R: usize, const T: usize>(
    rows: &[u8],
    rb: usize,
    x: &[i8],
    stride: usize,
    acc: &mut [i32],
) {
    debug_assert!(rows.len() == R * rb && acc.len() == R * T);
    debug_assert!(x.len() >= stride * (T - 1) + rb * 4);
    let m3 = _mm256_set1_epi8(3);
    let m12 = _mm256_set1_epi8(12);
    let ones = _mm256_set1_epi16(1);
    let mut sums = [[_mm256_setzero_si256(); T]; R];
    let (wp, xp) = (rows.as_ptr(), x.as_ptr());
    let blocks = rb / BLOCK_BYTES;
    let mut b0 = 0;
    while b0 < blocks {
        let b1 = (b0 + I16_BLOCKS).min(blocks);
        let mut part = [[_mm256_setzero_si256(); T]; R];
        for blk in b0..b1 {
            for (r, part) in part.iter_mut().enumerate() {
                // SAFETY: block `blk` of row `r` is inside `rows`; a prefetch of any address
                // is harmless; token `t`'s activations of this block end at
                // `t * stride + 128 * (blk + 1) <= x.len()` (caller's contract).
                unsafe {
                    let at = wp.add(r * rb + BLOCK_BYTES * blk);
                    if blk % 2 == 0 {
                        let ahead = at.wrapping_add(PREFETCH_TILES * R * rb);
                        _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                    }
                    let v = _mm256_loadu_si256(at.cast());
                    let h = _mm256_srli_epi16::<4>(v);
                    let q0 = _mm256_and_si256(v, m3);
                    let q1 = _mm256_and_si256(v, m12);
                    let q2 = _mm256_and_si256(h, m3);
                    let q3 = _mm256_and_si256(h, m12);
                    for (t, s) in part.iter_mut().enumerate() {
                        let xb = xp.add(t * stride + BLOCK * blk);
                        let d0 = _mm256_maddubs_epi16(q0, _mm256_loadu_si256(xb.cast()));
                        let d1 = _mm256_maddubs_epi16(q1, _mm256_loadu_si256(xb.add(32).cast()));
                        let d2 = _mm256_maddubs_epi16(q2, _mm256_loadu_si256(xb.add(64).cast()));
                        let d3 = _mm256_maddubs_epi16(q3, _mm256_loadu_si256(xb.add(96).cast()));
                        let d13 = _mm256_srai_epi16::<2>(_mm256_add_epi16(d1, d3));
                        let d = _mm256_add_epi16(_mm256_add_epi16(d0, d2), d13);
                        *s = _mm256_add_epi16(*s, d);
                    }
                }
            }
        }
        for (sr, pr) in sums.iter_mut().zip(part) {
            for (s, p) in sr.iter_mut().zip(pr) {
                *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
            }
        }
        b0 = b1;
    }
    // Reduce every (row, token) accumulator's eight lanes at once.
    let mut four = [_mm256_setzero_si256(); 4];
    for (i, v) in sums.iter().flatten().enumerate() {
        four[i] = *v;
    }
    let all = hsum4_i32(four);
    for (i, a) in acc.iter_mut().enumerate() {
        *a = all[i];
    }
}

/// The prefill tile, 2 rows x 4 tokens (CPU v5, docs/NOTES.md). Plane by plane: each row's
/// codes `u = (v >> 2p) & 3` (one shift, one and), each token's 32 activations loaded once
/// for both rows, one `vpmaddubsw` and one add per (row, token): per block and 1024
/// multiply-adds 78 vector ALU ops and 18 loads, where the 1 x 4 tile needs 82 and 34. The
/// block is written in assembly because LLVM, given the same intrinsics, hoists the loads and
/// spills 4-6 of the 8 accumulators (v4, rejected); here 8 accumulators, the mask and 6
/// temporaries take 15 of the 16 `ymm` registers. Sums: as `tile_i8_rt` (3072 per block and
/// lane at most, widened every [`I16_BLOCKS`]).
///
/// # Safety
/// As [`tile_i8`] for the tile (2, 4): `rows.len() == 2 * rb`, `acc.len() == 8`, `x` holds
/// `3 * stride + rb * 4` elements.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_i8_2x4(rows: &[u8], rb: usize, x: &[i8], stride: usize, acc: &mut [i32]) {
    debug_assert!(rows.len() == 2 * rb && acc.len() == 8);
    debug_assert!(x.len() >= 3 * stride + rb * 4);
    let m3 = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut sums = [_mm256_setzero_si256(); 8];
    let (wp, xp) = (rows.as_ptr(), x.as_ptr());
    let blocks = rb / BLOCK_BYTES;
    let mut b0 = 0;
    while b0 < blocks {
        let b1 = (b0 + I16_BLOCKS).min(blocks);
        let mut part = [_mm256_setzero_si256(); 8];
        for blk in b0..b1 {
            // SAFETY: block `blk` of both rows is inside `rows`; the four tokens' activations
            // of this block end at `3 * stride + 128 * (blk + 1) <= x.len()`.
            unsafe {
                block_2x4(
                    wp.add(BLOCK_BYTES * blk),
                    rb,
                    xp.add(BLOCK * blk),
                    stride,
                    m3,
                    &mut part,
                )
            };
        }
        for (s, p) in sums.iter_mut().zip(part) {
            *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
        }
        b0 = b1;
    }
    let lo = hsum4_i32([sums[0], sums[1], sums[2], sums[3]]);
    let hi = hsum4_i32([sums[4], sums[5], sums[6], sums[7]]);
    acc[..4].copy_from_slice(&lo);
    acc[4..].copy_from_slice(&hi);
}

/// The `vpmaddubsw` and add of one plane's codes (`qa` row 0, `qb` row 1) against one token's
/// 32 activations at `[x + off]`, into that token's two accumulators.
macro_rules! token_2x4 {
    ($off:expr, $a:literal, $b:literal) => {
        concat!(
            "vmovdqu {xv}, [",
            $off,
            "]\n",
            "vpmaddubsw {t}, {qa}, {xv}\n",
            "vpaddw {",
            $a,
            "}, {",
            $a,
            "}, {t}\n",
            "vpmaddubsw {t}, {qb}, {xv}\n",
            "vpaddw {",
            $b,
            "}, {",
            $b,
            "}, {t}\n",
        )
    };
}

/// Moves both rows' next plane into bits 0-1 of every byte (a 16-bit shift: the bits that
/// cross into a byte from its neighbour are masked off by the `& 3` that follows).
macro_rules! shift_2x4 {
    () => {
        "vpsrlw {va}, {va}, 2\nvpsrlw {vb}, {vb}, 2\n"
    };
}

/// One plane of one block: decode both rows' codes, then the four tokens (token `t` at
/// `x + t * stride`, plane `p` at byte `32 p`). Planes after the first shift the rows first.
macro_rules! plane_2x4 {
    ($shift:expr, $p:literal) => {
        concat!(
            $shift,
            "vpand {qa}, {va}, {m3}\n",
            "vpand {qb}, {vb}, {m3}\n",
            token_2x4!(concat!("{x} + ", $p), "a0", "b0"),
            token_2x4!(concat!("{x} + {s} + ", $p), "a1", "b1"),
            token_2x4!(concat!("{x} + 2*{s} + ", $p), "a2", "b2"),
            token_2x4!(concat!("{x} + {s3} + ", $p), "a3", "b3"),
        )
    };
}

/// One block of [`tile_i8_2x4`]: rows at `w` and `w + rb`, tokens at `x + t * stride`.
///
/// # Safety
/// AVX2; 32 bytes readable at `w` and `w + rb`, 128 at `x + t * stride` for `t` in 0..4.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn block_2x4(
    w: *const u8,
    rb: usize,
    x: *const i8,
    stride: usize,
    m3: __m256i,
    part: &mut [__m256i; 8],
) {
    let [mut a0, mut a1, mut a2, mut a3, mut b0, mut b1, mut b2, mut b3] = *part;
    // SAFETY: reads only the bytes the caller's contract names; writes only registers.
    unsafe {
        asm!(
            "vmovdqu {va}, [{w}]",
            "vmovdqu {vb}, [{w} + {rb}]",
            plane_2x4!("", "0"),
            plane_2x4!(shift_2x4!(), "32"),
            plane_2x4!(shift_2x4!(), "64"),
            plane_2x4!(shift_2x4!(), "96"),
            w = in(reg) w,
            rb = in(reg) rb,
            x = in(reg) x,
            s = in(reg) stride,
            s3 = in(reg) 3 * stride,
            m3 = in(ymm_reg) m3,
            a0 = inout(ymm_reg) a0,
            a1 = inout(ymm_reg) a1,
            a2 = inout(ymm_reg) a2,
            a3 = inout(ymm_reg) a3,
            b0 = inout(ymm_reg) b0,
            b1 = inout(ymm_reg) b1,
            b2 = inout(ymm_reg) b2,
            b3 = inout(ymm_reg) b3,
            va = out(ymm_reg) _,
            vb = out(ymm_reg) _,
            qa = out(ymm_reg) _,
            qb = out(ymm_reg) _,
            xv = out(ymm_reg) _,
            t = out(ymm_reg) _,
            options(nostack, readonly, preserves_flags),
        );
    }
    *part = [a0, a1, a2, a3, b0, b1, b2, b3];
}

/// See [`crate::cpu::arch::Micro::row_f32`].
///
/// # Safety
/// As [`row_i8`].
#[target_feature(enable = "avx2,fma")]
pub unsafe fn row_f32(row: &[u8], x: &[f32], stride: usize, ab: (f32, f32), acc: &mut [f32]) {
    // SAFETY: the caller's contract is each tile's contract.
    unsafe {
        match acc.len() {
            1 => row_f32_tile::<1, 8>(row, x, stride, ab, acc),
            2 => row_f32_tile::<2, 4>(row, x, stride, ab, acc),
            3 => row_f32_tile::<3, 2>(row, x, stride, ab, acc),
            _ => row_f32_tile::<4, 2>(row, x, stride, ab, acc),
        }
    }
}

/// `T` tokens, `C` accumulators per token (independent FMA chains).
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn row_f32_tile<const T: usize, const C: usize>(
    row: &[u8],
    x: &[f32],
    stride: usize,
    (a, b): (f32, f32),
    acc: &mut [f32],
) {
    debug_assert!(acc.len() == T && x.len() >= stride * (T - 1) + row.len() * 4);
    // Code -> weight by a register lookup: `vpermps` reads the low three bits of each lane,
    // i.e. this code and one bit of the next, so the table repeats and no mask is needed.
    let w_of = |u: f32| a * u + b;
    let table = _mm256_setr_ps(
        w_of(0.0),
        w_of(1.0),
        w_of(2.0),
        w_of(3.0),
        w_of(0.0),
        w_of(1.0),
        w_of(2.0),
        w_of(3.0),
    );
    let mut sums = [[_mm256_setzero_ps(); C]; T];
    let (wp, xp) = (row.as_ptr(), x.as_ptr());
    for blk in 0..row.len() / BLOCK_BYTES {
        for g in 0..4 {
            // SAFETY: bytes `8g .. 8g+8` of block `blk` are inside `row`; the activations
            // read end at `t * stride + 128 * (blk + 1) <= x.len()` (caller's contract).
            unsafe {
                // Decode 8 bytes -> 8 lanes holding four codes each (columns 8g + lane + 32p).
                let e =
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(wp.add(BLOCK_BYTES * blk + 8 * g).cast()));
                let planes = [
                    e,
                    _mm256_srli_epi32::<2>(e),
                    _mm256_srli_epi32::<4>(e),
                    _mm256_srli_epi32::<6>(e),
                ];
                for (p, codes) in planes.into_iter().enumerate() {
                    let w = _mm256_permutevar8x32_ps(table, codes);
                    let col = BLOCK * blk + 32 * p + 8 * g;
                    for (t, s) in sums.iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(xp.add(t * stride + col));
                        let c = (4 * g + p) % C;
                        s[c] = _mm256_fmadd_ps(w, xv, s[c]);
                    }
                }
            }
        }
    }
    for (o, s) in acc.iter_mut().zip(sums) {
        let mut v = s[0];
        for &more in &s[1..] {
            v = _mm256_add_ps(v, more);
        }
        *o = hsum_f32(v);
    }
}

/// `sum_k a[k] * b[k]`, four 8-lane FMA chains.
///
/// # Safety
/// The CPU must support AVX2 and FMA; `a.len() == b.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [_mm256_setzero_ps(); 4];
    let whole = a.len() / 32 * 32;
    for k in (0..whole).step_by(32) {
        for (j, s) in acc.iter_mut().enumerate() {
            // SAFETY: `k + 8j + 8 <= whole <= a.len() == b.len()`.
            unsafe {
                let x = _mm256_loadu_ps(a.as_ptr().add(k + 8 * j));
                let y = _mm256_loadu_ps(b.as_ptr().add(k + 8 * j));
                *s = _mm256_fmadd_ps(x, y, *s);
            }
        }
    }
    let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let tail: f32 = a[whole..].iter().zip(&b[whole..]).map(|(x, y)| x * y).sum();
    hsum_f32(v) + tail
}

/// The lane sums of four vectors.
#[target_feature(enable = "avx2")]
#[inline]
fn hsum4_i32(v: [__m256i; 4]) -> [i32; 4] {
    // After two horizontal adds lane i holds a partial of v[i % 4] (halves 0 and 1).
    let h = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
    let s = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h));
    let mut out = [0i32; 4];
    // SAFETY: `out` holds exactly 16 bytes.
    unsafe { _mm_storeu_si128(out.as_mut_ptr().cast(), s) };
    out
}

#[target_feature(enable = "avx2")]
#[inline]
fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}
