//! AVX2 micro-kernels over the C2 layout (docs/FORMATS.md, "C2").
//!
//! One C2 block is 32 bytes = one `ymm`: plane `p` (bits `2p..2p+1` of every byte) holds the
//! codes of the 32 consecutive columns `32p .. 32p+31`, so `(v >> 2p) & 3` lines up with a
//! plain 32-byte load of the activations and no shuffle is needed.
//!
//! Integer path, per block and token: 4 `vpmaddubsw` (unsigned code x signed int8, pairs
//! summed to i16: |3 * 128 * 2| = 768 per lane, 3072 after the three adds, no saturation),
//! one `vpmaddwd` by ones to widen to i32. The decode (3 shifts, 4 ands) is shared by the
//! tile's tokens. Budget: ~21 vector ops per 32 bytes of weights at batch 1.
//!
//! Float path: codes widen to i32 (`vpmovzxbd`), a `vpermps` table lookup turns each into
//! its weight `a * u + b`, then one FMA per token; several accumulators per token hide the
//! FMA latency.

use std::arch::x86_64::*;

use super::super::{BLOCK, BLOCK_BYTES};

/// See [`crate::cpu::arch::Micro::row_i8`].
///
/// # Safety
/// The CPU must support AVX2 and FMA; `row.len()` is a multiple of 32, `acc.len()` in
/// 1..=4, and `x` holds `stride * (acc.len() - 1) + row.len() * 4` elements.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn row_i8(row: &[u8], x: &[i8], stride: usize, acc: &mut [i32]) {
    // SAFETY: the caller's contract is each tile's contract.
    unsafe {
        match acc.len() {
            1 => row_i8_tile::<1>(row, x, stride, acc),
            2 => row_i8_tile::<2>(row, x, stride, acc),
            3 => row_i8_tile::<3>(row, x, stride, acc),
            _ => row_i8_tile::<4>(row, x, stride, acc),
        }
    }
}

/// Blocks whose i16 sums may add up before widening: 3072 per block per lane, and
/// 10 * 3072 < 32767.
const I16_BLOCKS: usize = 8;

#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn row_i8_tile<const T: usize>(row: &[u8], x: &[i8], stride: usize, acc: &mut [i32]) {
    debug_assert!(acc.len() == T && x.len() >= stride * (T - 1) + row.len() * 4);
    let mask = _mm256_set1_epi8(3);
    let ones = _mm256_set1_epi16(1);
    let mut sums = [_mm256_setzero_si256(); T];
    let (wp, xp) = (row.as_ptr(), x.as_ptr());
    let blocks = row.len() / BLOCK_BYTES;
    for b0 in (0..blocks).step_by(I16_BLOCKS) {
        // i16 partial sums over up to I16_BLOCKS blocks, widened once: saves a vpmaddwd and
        // a vpaddd per block.
        let mut part = [_mm256_setzero_si256(); T];
        for blk in b0..(b0 + I16_BLOCKS).min(blocks) {
            // SAFETY: block `blk` is inside `row`, and token `t`'s 128 activations of this
            // block end at `t * stride + 128 * (blk + 1) <= x.len()` (caller's contract).
            unsafe {
                // Phase 1, decode: the four code planes of 32 columns each.
                let v = _mm256_loadu_si256(wp.add(BLOCK_BYTES * blk).cast());
                let p0 = _mm256_and_si256(v, mask);
                let p1 = _mm256_and_si256(_mm256_srli_epi16::<2>(v), mask);
                let p2 = _mm256_and_si256(_mm256_srli_epi16::<4>(v), mask);
                let p3 = _mm256_and_si256(_mm256_srli_epi16::<6>(v), mask);
                // Phase 2, multiply-accumulate every token of the tile.
                for (t, s) in part.iter_mut().enumerate() {
                    let xb = xp.add(t * stride + BLOCK * blk);
                    let d0 = _mm256_maddubs_epi16(p0, _mm256_loadu_si256(xb.cast()));
                    let d1 = _mm256_maddubs_epi16(p1, _mm256_loadu_si256(xb.add(32).cast()));
                    let d2 = _mm256_maddubs_epi16(p2, _mm256_loadu_si256(xb.add(64).cast()));
                    let d3 = _mm256_maddubs_epi16(p3, _mm256_loadu_si256(xb.add(96).cast()));
                    let d = _mm256_add_epi16(_mm256_add_epi16(d0, d1), _mm256_add_epi16(d2, d3));
                    *s = _mm256_add_epi16(*s, d);
                }
            }
        }
        for (s, p) in sums.iter_mut().zip(part) {
            *s = _mm256_add_epi32(*s, _mm256_madd_epi16(p, ones));
        }
    }
    // Phase 3, reduce each token's eight lanes.
    for (a, s) in acc.iter_mut().zip(sums) {
        *a = hsum_i32(s);
    }
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

#[target_feature(enable = "avx2")]
#[inline]
fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

#[target_feature(enable = "avx2")]
#[inline]
fn hsum_f32(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}
