//! Property tests of the formats, quantizers and CPU kernels against independent,
//! naive float64 / integer oracles, over odd shapes (columns not a multiple of 16,
//! rows from 1 to 17).

use half::{bf16, f16};
use proptest::prelude::*;
use warp_bitnet::cpu::reference;
use warp_bitnet::format::{i2, tiled};
use warp_bitnet::format::{Int2Matrix, PackedWeights};
use warp_bitnet::quant::{quantize_activations_i8, quantize_ternary, WeightQuant};
use warp_bitnet::{Activation, Error, Levels, Scale, TernaryMatrix};

fn shape() -> impl Strategy<Value = (usize, usize)> {
    (1usize..=17, 1usize..=70)
}

fn ternary(rows: usize, cols: usize) -> impl Strategy<Value = Vec<i8>> {
    proptest::collection::vec(-1i8..=1, rows * cols)
}

fn matrix() -> impl Strategy<Value = (usize, usize, Vec<i8>)> {
    shape().prop_flat_map(|(r, c)| (Just(r), Just(c), ternary(r, c)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn pack_unpack_round_trip((rows, cols, w) in matrix()) {
        let words = i2::pack(&w, rows, cols).unwrap();
        prop_assert_eq!(words.len(), rows * cols.div_ceil(16));
        prop_assert_eq!(i2::unpack(&words, rows, cols).unwrap(), w);
    }

    #[test]
    fn validate_names_every_invalid_position((rows, cols, w) in matrix(), pick in any::<prop::sample::Index>()) {
        let mut words = i2::pack(&w, rows, cols).unwrap();
        let at = pick.index(rows * cols);
        let (r, c) = (at / cols, at % cols);
        words[r * cols.div_ceil(16) + c / 16] |= 0b11 << (2 * (c % 16));
        match i2::validate(&words, rows, cols) {
            Err(Error::InvalidCode { row, col, code: 3 }) => prop_assert_eq!((row, col), (r, c)),
            other => prop_assert!(false, "expected InvalidCode at ({}, {}), got {:?}", r, c, other),
        }
    }

    #[test]
    fn tiled_layout_round_trip((rows, cols, w) in matrix()) {
        let words = i2::pack(&w, rows, cols).unwrap();
        let t = tiled::from_i2(&words, rows, cols).unwrap();
        prop_assert_eq!(t.len(), tiled::len_words(rows, cols));
        // Every T2 code is a valid weight + 1, padding included.
        prop_assert!(t.iter().all(|&x| (0..16).all(|s| (x >> (2 * s)) & 3 != 3)));
        prop_assert_eq!(tiled::to_i2(&t, rows, cols).unwrap(), words);
    }

    #[test]
    fn absmean_matches_the_formula((rows, cols) in shape(), seed in any::<u64>()) {
        let w = floats(rows * cols, seed, 3.0);
        let m = quantize_ternary(&w, rows, cols, WeightQuant::AbsMean).unwrap();
        let gamma = ((w.iter().map(|v| f64::from(v.abs())).sum::<f64>() / w.len() as f64) as f32).max(1e-5);
        prop_assert_eq!(m.scale(), &Scale::PerTensor(gamma));
        let want: Vec<i8> = w.iter().map(|v| (v / gamma).round_ties_even().clamp(-1.0, 1.0) as i8).collect();
        prop_assert_eq!(m.to_ternary(), want);
    }

    #[test]
    fn absmean_row_and_absmax_match_the_formulas((rows, cols) in shape(), seed in any::<u64>()) {
        let w = floats(rows * cols, seed, 1.0);
        let m = quantize_ternary(&w, rows, cols, WeightQuant::AbsMeanRow).unwrap();
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            let g = ((row.iter().map(|v| f64::from(v.abs())).sum::<f64>() / cols as f64) as f32).max(1e-5);
            prop_assert_eq!(m.scale().of_row(r), g);
        }
        let m = quantize_ternary(&w, rows, cols, WeightQuant::AbsMax).unwrap();
        let s = w.iter().fold(0f32, |a, v| a.max(v.abs())).max(1e-5);
        prop_assert_eq!(m.scale(), &Scale::PerTensor(s));
        let want: Vec<i8> = w.iter().map(|v| (v / s).round_ties_even().clamp(-1.0, 1.0) as i8).collect();
        prop_assert_eq!(m.to_ternary(), want);
    }

    #[test]
    fn activation_quantizer_matches_the_formula(batch in 1usize..5, n in 1usize..70, seed in any::<u64>()) {
        let x = floats(batch * n, seed, 10.0);
        let a = quantize_activations_i8(&x, batch, n).unwrap();
        for b in 0..batch {
            let row = &x[b * n..(b + 1) * n];
            let s = 127.0f32 / row.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-5);
            for (k, v) in row.iter().enumerate() {
                prop_assert_eq!(a.q[b * n + k], (v * s).round_ties_even().clamp(-128.0, 127.0) as i8);
            }
            prop_assert_eq!(a.scale[b], 1.0 / s);
        }
    }

    /// Integer-valued activations with no scale: every f32 partial sum is exact, so
    /// the reference must equal the float64 oracle exactly, for every activation type.
    #[test]
    fn gemm_is_exact_on_integer_inputs((rows, cols, w) in matrix(), batch in 1usize..4, seed in any::<u64>()) {
        let m = TernaryMatrix::from_ternary(rows, cols, &w, Scale::None).unwrap();
        // Integers in [-2, 2]: every sum (at most 140 in magnitude) is exact even in bf16.
        let x: Vec<f32> = floats(batch * cols, seed, 2.0).iter().map(|v| v.round()).collect();
        let want = naive(&w, rows, cols, &x, batch);
        prop_assert_eq!(run::<f32>(&m, &x, batch), want.clone());
        prop_assert_eq!(run::<f16>(&m, &x, batch), want.clone());
        prop_assert_eq!(run::<bf16>(&m, &x, batch), want);
    }

    #[test]
    fn w2a8_integer_part_is_exact((rows, cols, w) in matrix(), batch in 1usize..4, seed in any::<u64>()) {
        let m = TernaryMatrix::from_ternary(rows, cols, &w, Scale::PerTensor(0.5)).unwrap();
        let q: Vec<i8> = floats(batch * cols, seed, 128.0).iter().map(|v| v.clamp(-128.0, 127.0) as i8).collect();
        let acc = reference::gemm_i8_accumulate(&m, &q, batch).unwrap();
        let qf: Vec<f32> = q.iter().map(|&v| f32::from(v)).collect();
        let want = naive(&w, rows, cols, &qf, batch);
        prop_assert_eq!(acc.iter().map(|&v| v as f64).collect::<Vec<_>>(), want);
    }

    #[test]
    fn gemm_with_scale_and_bias_is_close_to_float64((rows, cols, w) in matrix(), seed in any::<u64>()) {
        let scale: Vec<f32> = floats(rows, seed ^ 1, 1.0).iter().map(|v| v.abs() + 0.1).collect();
        let m = TernaryMatrix::from_ternary(rows, cols, &w, Scale::PerRow(scale.clone())).unwrap();
        let x = floats(2 * cols, seed, 1.0);
        let bias = floats(rows, seed ^ 2, 1.0);
        let mut y = vec![0f32; 2 * rows];
        reference::gemm(&m, &x, 2, Some(&bias), &mut y).unwrap();
        let dots = naive(&w, rows, cols, &x, 2);
        for (i, (&got, d)) in y.iter().zip(dots).enumerate() {
            let r = i % rows;
            let want = d * f64::from(scale[r]) + f64::from(bias[r]);
            // f32 accumulation of at most 70 terms of magnitude <= 1.
            prop_assert!((f64::from(got) - want).abs() <= 1e-4, "{} vs {}", got, want);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// INT2: levels code - 1.5 against float64, exact on half-integer products.
    #[test]
    fn int2_gemm_matches_float64(
        (rows, cols) in shape(), batch in 1usize..4, seed in any::<u64>(), per_row in any::<bool>()
    ) {
        let codes: Vec<u8> = floats(rows * cols, seed ^ 3, 2.0).iter().map(|v| (v + 2.0) as u8).collect();
        let levels: Vec<f64> = codes.iter().map(|&c| f64::from(c) - 1.5).collect();
        let scale: Vec<f32> = floats(rows, seed ^ 1, 1.0).iter().map(|v| v.abs() + 0.1).collect();
        let s = if per_row { Scale::PerRow(scale.clone()) } else { Scale::None };
        let m = Int2Matrix::from_codes(rows, cols, &codes, s).unwrap();
        let scale_of = |r: usize| if per_row { f64::from(scale[r]) } else { 1.0 };
        let x = floats(batch * cols, seed, 1.0);
        let bias = floats(rows, seed ^ 2, 1.0);
        let mut y = vec![f32::NAN; batch * rows];
        reference::gemm(&m, &x, batch, Some(&bias), &mut y).unwrap();
        for (i, &got) in y.iter().enumerate() {
            let (b, r) = (i / rows, i % rows);
            let dot: f64 = (0..cols).map(|k| levels[r * cols + k] * f64::from(x[b * cols + k])).sum();
            let want = dot * scale_of(r) + f64::from(bias[r]);
            // f32 accumulation of at most 70 terms of magnitude <= 1.5.
            prop_assert!((f64::from(got) - want).abs() <= 2e-4, "{} vs {}", got, want);
        }

        // W2A8: the integer part is exactly sum q * (2c - 3); the output halves it.
        let q: Vec<i8> = floats(batch * cols, seed ^ 4, 128.0).iter().map(|v| v.clamp(-128.0, 127.0) as i8).collect();
        let acc = reference::gemm_i8_accumulate(&m, &q, batch).unwrap();
        let x_scale = vec![0.25f32; batch];
        let mut y = vec![f32::NAN; batch * rows];
        reference::gemm_w2a8(&m, &q, &x_scale, batch, None, &mut y).unwrap();
        for (i, (&a, &got)) in acc.iter().zip(&y).enumerate() {
            let (b, r) = (i / rows, i % rows);
            let exact: i64 = (0..cols).map(|k| i64::from(q[b * cols + k]) * (2 * i64::from(codes[r * cols + k]) - 3)).sum();
            prop_assert_eq!(i64::from(a), exact);
            let want = exact as f64 * 0.5 * 0.25 * scale_of(r);
            prop_assert!((f64::from(got) - want).abs() <= 1e-6 * want.abs().max(1.0), "{} vs {}", got, want);
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    // Products that overflow usize are errors, not panics or wrapped lengths.
    assert!(matches!(
        i2::validate(&[], 1 << 62, 64),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        i2::pack(&[0], usize::MAX, 2),
        Err(Error::TooLarge { .. })
    ));
    assert!(matches!(
        quantize_activations_i8(&[0f32; 2], usize::MAX / 2 + 1, 2),
        Err(Error::TooLarge { .. })
    ));
    let one = TernaryMatrix::from_ternary(2, 2, &[0; 4], Scale::None).unwrap();
    let mut y = [0f32; 2];
    assert!(matches!(
        reference::gemm(&one, &[0f32; 2], usize::MAX / 2 + 1, None, &mut y),
        Err(Error::ShapeMismatch { arg: "x", .. })
    ));
    // W2A8 accumulates in i32: rows longer than MAX_W2A8_COLS are refused.
    let wide = TernaryMatrix::from_words(
        1,
        Levels::Ternary.max_w2a8_cols() + 1,
        vec![0; (Levels::Ternary.max_w2a8_cols() + 16) / 16],
        Scale::None,
    )
    .unwrap();
    assert!(matches!(
        reference::gemm_i8_accumulate(&wide, &[], 1),
        Err(Error::TooLarge { arg: "cols", .. })
    ));
    // INT2 products reach 3 * 128 per column: a lower limit.
    let int2_limit = <Int2Matrix as PackedWeights>::MAX_W2A8_COLS;
    assert!(int2_limit < Levels::Ternary.max_w2a8_cols());
    let wide = Int2Matrix::from_words(
        1,
        int2_limit + 1,
        vec![0; (int2_limit + 16) / 16],
        Scale::None,
    )
    .unwrap();
    assert!(matches!(
        reference::gemm_i8_accumulate(&wide, &[], 1),
        Err(Error::TooLarge { arg: "cols", .. })
    ));

    let m = TernaryMatrix::from_ternary(2, 3, &[0; 6], Scale::None).unwrap();
    let mut y = [0f32; 2];
    assert!(matches!(
        reference::gemm(&m, &[0f32; 2], 1, None, &mut y),
        Err(Error::ShapeMismatch { arg: "x", .. })
    ));
    assert!(matches!(
        reference::gemm(&m, &[0f32; 3], 1, None, &mut [0f32; 3]),
        Err(Error::ShapeMismatch { arg: "y", .. })
    ));
    assert!(matches!(
        reference::gemm(&m, &[0f32; 3], 1, Some(&[0f32; 1]), &mut y),
        Err(Error::ShapeMismatch { arg: "bias", .. })
    ));
    assert!(matches!(
        reference::gemm::<f32>(&m, &[], 0, None, &mut []),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        TernaryMatrix::from_ternary(0, 3, &[], Scale::None),
        Err(Error::Empty { .. })
    ));
    assert!(matches!(
        TernaryMatrix::from_ternary(1, 1, &[0], Scale::PerRow(vec![1.0; 2])),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        TernaryMatrix::from_words(1, usize::MAX / 2, vec![], Scale::None),
        Err(Error::TooLarge { arg: "cols", .. })
    ));
}

fn run<T: Activation>(m: &TernaryMatrix, x: &[f32], batch: usize) -> Vec<f64> {
    let xt: Vec<T> = x.iter().map(|&v| T::from_f32(v)).collect();
    let mut y = vec![T::default(); batch * m.rows()];
    reference::gemm(m, &xt, batch, None, &mut y).unwrap();
    y.iter().map(|v| f64::from(v.to_f32())).collect()
}

/// `y[b, r] = sum_k w[r, k] x[b, k]` in float64, straight from the unpacked weights.
fn naive(w: &[i8], rows: usize, cols: usize, x: &[f32], batch: usize) -> Vec<f64> {
    let mut y = vec![0f64; batch * rows];
    for b in 0..batch {
        for r in 0..rows {
            y[b * rows + r] = (0..cols)
                .map(|k| f64::from(w[r * cols + k]) * f64::from(x[b * cols + k]))
                .sum();
        }
    }
    y
}

/// Deterministic pseudo-random floats in (-amp, amp), with some exact ties.
fn floats(n: usize, seed: u64, amp: f32) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            if i % 7 == 3 {
                0.5 * amp * (2.0 * u - 1.0).signum()
            } else {
                amp * (2.0 * u - 1.0)
            }
        })
        .collect()
}
