//! AVX2 + FMA + F16C dense matrix-vector products (see the parent module).
//!
//! One row at a time, streamed front to back so the hardware prefetcher sees one sequential
//! stream; `x` (10 KB at 2560 columns) stays in L1 across rows. Eight 8-lane FMA chains: with
//! four, the FMA latency (4 cycles on Zen 3) allowed one FMA a cycle, 8 int8 weights = 8 bytes
//! a cycle (~22 GB/s at 2.7 GHz), so the int8 lm_head could not keep up with DRAM (docs/NOTES.md,
//! "Grouped attention; the lm_head's FMA chains"). The widening of 8 weights is one or two
//! instructions per type.

use std::arch::x86_64::*;

use super::Rows;

/// See [`super::matvec`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` holds at least `out.len() * x.len()` elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matvec(w: Rows<'_>, x: &[f32], out: &mut [f32]) {
    debug_assert!(w.len() >= out.len() * x.len());
    // SAFETY: forwarded contract: every row `r < out.len()` lies inside `w`.
    unsafe {
        match w {
            Rows::F32(w) => rows_f32(w.as_ptr(), x, out),
            Rows::F16(w) => rows_f16(w.as_ptr().cast(), x, out),
            Rows::Bf16(w) => rows_bf16(w.as_ptr().cast(), x, out),
            Rows::I8(w) => rows_i8(w.as_ptr(), x, out),
        }
    }
}

/// One function per weight type: `$load(p)` widens the 8 weights at `p` to f32 lanes and
/// `$scalar(p)` one weight (the tail).
macro_rules! rows_fn {
    ($name:ident, $t:ty, $load:expr, $scalar:expr) => {
        /// # Safety
        /// As [`matvec`], with `w` pointing at the first row.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $name(w: *const $t, x: &[f32], out: &mut [f32]) {
            let n = x.len();
            let whole = n / 64 * 64;
            let eights = n / 8 * 8;
            let xp = x.as_ptr();
            for (r, o) in out.iter_mut().enumerate() {
                // SAFETY: row `r` is `n` elements at `w + r * n`, inside `w` (caller), and
                // every index below is under `n`, so `x` reads stay inside `x` too.
                unsafe {
                    let row = w.add(r * n);
                    let mut acc = [_mm256_setzero_ps(); 8];
                    for k in (0..whole).step_by(64) {
                        for (j, s) in acc.iter_mut().enumerate() {
                            let wv = $load(row.add(k + 8 * j));
                            let xv = _mm256_loadu_ps(xp.add(k + 8 * j));
                            *s = _mm256_fmadd_ps(wv, xv, *s);
                        }
                    }
                    for k in (whole..eights).step_by(8) {
                        let wv = $load(row.add(k));
                        acc[0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp.add(k)), acc[0]);
                    }
                    let mut v = acc[0];
                    for &a in &acc[1..] {
                        v = _mm256_add_ps(v, a);
                    }
                    let mut tail = 0f32;
                    for k in eights..n {
                        tail += $scalar(row.add(k)) * *xp.add(k);
                    }
                    *o = hsum(v) + tail;
                }
            }
        }
    };
}

rows_fn!(
    rows_f32,
    f32,
    |p: *const f32| _mm256_loadu_ps(p),
    |p: *const f32| *p
);
rows_fn!(
    rows_f16,
    u16,
    |p: *const u16| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    |p: *const u16| half::f16::from_bits(*p).to_f32()
);
rows_fn!(
    rows_bf16,
    u16,
    // bf16 is the top half of an f32: zero-extend to 32 bits and shift into place.
    |p: *const u16| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(
        _mm_loadu_si128(p.cast())
    ))),
    |p: *const u16| half::bf16::from_bits(*p).to_f32()
);
rows_fn!(
    rows_i8,
    i8,
    |p: *const i8| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))),
    |p: *const i8| f32::from(*p)
);

#[target_feature(enable = "avx2")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}
