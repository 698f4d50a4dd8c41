//! The sampler's bit-exact primitives, written with IEEE-rounded `+ - * /` only (no fused
//! multiply-add, no library `exp`), so that engine.cu's copies (`draw_bits`, `exp_neg`,
//! `order_key`, `weight_q`, `mass_target`) compute the same bits on a GPU. The RNG's test
//! vectors below are `static_assert`s in engine.cu too; the GPU tests compare the rest.

/// SplitMix64's increment (the golden ratio in 64 bits).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function of state `z` (Steele, Lea and Flood, 2014): a bijection of
/// u64 whose outputs pass BigCrush for consecutive inputs.
pub(crate) fn splitmix64(z: u64) -> u64 {
    let z = z.wrapping_add(GOLDEN);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The 64 random bits of draw `step` of stream `stream` under `seed`: a counter-based
/// generator (no state but the counter), so a GPU row computes its draw from its parameters.
pub(crate) fn draw_bits(seed: u64, stream: u64, step: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed) ^ stream) ^ step)
}

/// `floor(bits * range / 2^64)`: a draw in `[0, range)` (Lemire's multiply-shift; the bias is
/// below `range / 2^64`, under 2^-1 of one unit for any total mass the sampler forms).
pub(crate) fn scale_draw(bits: u64, range: u64) -> u64 {
    ((u128::from(bits) * u128::from(range)) >> 64) as u64
}

/// ln 2 split so that `j * LN2_HI` is exact for |j| < 2^9 (fdlibm's expf constants).
const LN2_HI: u32 = 0x3f31_7200;
const LN2_LO: u32 = 0x35bf_be8e;
/// 1/6, 1/24, 1/120, 1/720 rounded to f32 (a test checks them against the divisions).
const C3: u32 = 0x3e2a_aaab;
const C4: u32 = 0x3d2a_aaab;
const C5: u32 = 0x3c08_8889;
const C6: u32 = 0x3ab6_0b61;

/// `e^y` for `y <= 0` within ~2e-7 relative, 0 below -64 (where the sampler's fixed-point
/// weights are 0 anyway) and for -inf. Cody-Waite reduction `y = j ln2 + r`, |r| <= ~0.35,
/// then the degree-6 Taylor polynomial of `e^r` by Horner, then the exponent `j` in the bits.
pub(crate) fn exp_neg(y: f32) -> f32 {
    if y.is_nan() || y < -64.0 {
        return 0.0;
    }
    let j = (y * std::f32::consts::LOG2_E + 0.5).floor();
    let r = (y - j * f32::from_bits(LN2_HI)) - j * f32::from_bits(LN2_LO);
    let mut p = f32::from_bits(C6);
    for c in [C5, C4, C3] {
        p = f32::from_bits(c) + r * p;
    }
    p = 0.5 + r * p;
    p = 1.0 + r * p;
    p = 1.0 + r * p;
    // j in [-93, 1]: 2^j is a normal float, so the product is exact but for rounding of p.
    p * f32::from_bits(((j as i32 + 127) as u32) << 23)
}

/// A u32 whose unsigned order is `f32::total_cmp`'s order of non-NaN `x` (-0 below +0).
pub(crate) fn order_key(x: f32) -> u32 {
    let b = x.to_bits();
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The fixed-point shift of the weights for a vocabulary of `n` (>= 1): `63 - bits(n)`, so
/// that `n` weights of at most `2^shift` sum below 2^63 (46 for 128,256 tokens).
pub(crate) fn weight_shift(n: usize) -> u32 {
    let n = u32::try_from(n).unwrap_or(u32::MAX).max(1);
    63 - (32 - n.leading_zeros())
}

/// The integer weight of logit `x` given the largest logit `max` (finite), `temperature > 0`
/// and `shift`: `floor(min(e^((x - max) / t), 1) * 2^shift)`.
pub(crate) fn weight_q(x: f32, max: f32, temperature: f32, shift: u32) -> u64 {
    let w = exp_neg((x - max) / temperature).min(1.0);
    (w * f32::from_bits((127 + shift) << 23)) as u64
}

/// `top_p` in 2^-24 units, rounded up: the mass test is done in integers.
pub(crate) fn top_p24(top_p: f32) -> u32 {
    (f64::from(top_p) * 16_777_216.0).ceil() as u32
}

/// `ceil(p24 * total / 2^24)` without overflow for `total < 2^63`: the mass top-p must reach.
pub(crate) fn mass_target(total: u64, p24: u32) -> u64 {
    let p = u64::from(p24);
    p * (total >> 24) + (p * (total & 0xff_ffff)).div_ceil(1 << 24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_the_rounded_values() {
        assert_eq!(f32::from_bits(C3), 1.0f32 / 6.0);
        assert_eq!(f32::from_bits(C4), 1.0f32 / 24.0);
        assert_eq!(f32::from_bits(C5), 1.0f32 / 120.0);
        assert_eq!(f32::from_bits(C6), 1.0f32 / 720.0);
        // engine.cu writes log2(e) as these bits.
        assert_eq!(std::f32::consts::LOG2_E.to_bits(), 0x3fb8_aa3b);
        let ln2 = f64::from(f32::from_bits(LN2_HI)) + f64::from(f32::from_bits(LN2_LO));
        assert!((ln2 - std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn draw_bits_test_vectors() {
        // The same vectors are static_asserts in engine.cu (checked when NVRTC compiles it).
        for (seed, stream, step, want) in [
            (0, 0, 0, 0x2382_75bc_38fc_be91),
            (42, 0, 1, 0xb682_ee25_ce24_109e),
            (u64::MAX, 7, 1 << 40, 0x5468_1d88_8f6a_8dfc),
            (0x1234_5678_9abc_def0, 3, 99, 0x2765_bf6a_283a_56be),
        ] {
            assert_eq!(
                draw_bits(seed, stream, step),
                want,
                "{seed} {stream} {step}"
            );
        }
    }

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // The first outputs of SplitMix64 seeded with 0 (Vigna's splitmix64.c: the state
        // advances by GOLDEN before mixing).
        let mut s = 0u64;
        let out: Vec<u64> = (0..3)
            .map(|_| {
                let v = splitmix64(s);
                s = s.wrapping_add(GOLDEN);
                v
            })
            .collect();
        assert_eq!(
            out,
            [
                0xe220_a839_7b1d_cdaf,
                0x6e78_9e6a_a1b9_65f4,
                0x06c4_5d18_8009_454f
            ]
        );
    }

    #[test]
    fn exp_neg_is_close_to_exp() {
        let mut worst = 0f64;
        for i in 0..=640_000 {
            let y = -(i as f32) * 1e-4;
            let want = f64::from(y).exp();
            let got = f64::from(exp_neg(y));
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(-0.0), 1.0);
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_neg(-64.5), 0.0);
    }

    #[test]
    fn order_key_follows_total_cmp() {
        let xs = [
            f32::NEG_INFINITY,
            -3.5,
            -1e-30,
            -0.0,
            0.0,
            1e-40,
            2.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in xs.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{} {}", w[0], w[1]);
        }
    }

    #[test]
    fn weights_and_targets_stay_in_range() {
        assert_eq!(weight_shift(128_256), 46);
        assert_eq!(weight_shift(1), 62);
        assert_eq!(weight_q(3.0, 3.0, 0.7, 46), 1 << 46);
        assert_eq!(weight_q(f32::NEG_INFINITY, 3.0, 0.7, 46), 0);
        assert_eq!(top_p24(1.0), 1 << 24);
        assert_eq!(top_p24(0.5), 1 << 23);
        let total = (1u64 << 62) + 12_345;
        assert_eq!(mass_target(total, 1 << 24), total);
        assert_eq!(mass_target(total, 1 << 23), total.div_ceil(2));
        assert_eq!(mass_target(3, 1), 1);
    }
}
