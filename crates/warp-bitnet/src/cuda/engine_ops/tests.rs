//! The engine kernels' launch shapes and parameter checks (no GPU needed), and each kernel
//! against the Rust formula of the CPU engine (on a GPU host: `--include-ignored`).
//!
//! Exactness: the row kernels (norms, quantization, residual adds, ReLU², RoPE, the gather)
//! must match the formula bit for bit (they round every operation as the CPU does); SiLU and
//! the softmax use `expf` (CUDA: <= 2 ulp), so int8 codes may differ by one step where a value
//! sits on a rounding boundary, and attention outputs are compared with an f64 reference
//! within 1e-5 of the output's scale. The lm_head (cuBLAS, f32 accumulation) against an f64
//! product of the same (rounded) table and input: 1e-5 relative (L2) for every table type.

use super::*;

const MAX_SMEM: usize = 227 * 1024;

#[test]
fn row_shapes_check_tokens_and_shared_memory() {
    let s = row_norm_shape(3, 6912, MAX_SMEM).unwrap();
    assert_eq!(
        s,
        Shape {
            grid: (3, 1, 1),
            block: ROW_THREADS,
            smem: 6912 * 4
        }
    );
    assert!(matches!(
        row_norm_shape(0, 16, MAX_SMEM),
        Err(Error::Empty { arg: "tokens" })
    ));
    assert!(matches!(
        row_norm_shape(1, 0, MAX_SMEM),
        Err(Error::Empty { arg: "n" })
    ));
    // A row wider than shared memory holds is an error, not a launch failure.
    let err = row_norm_shape(1, MAX_SMEM / 4 + 1, MAX_SMEM).unwrap_err();
    assert!(err.to_string().contains("row width"), "{err}");
    assert!(row_shape(1 << 33, 256, 0, 0).is_err());
}

#[test]
fn attention_shape_is_heads_by_tokens_with_the_scores_in_shared_memory() {
    let s = attention_shape(20, 16, 128, 4096, MAX_SMEM).unwrap();
    assert_eq!(s.grid, (20, 16, 1));
    assert_eq!((s.block, s.smem), (ATT_THREADS, (128 + 4096) * 4));
    let err = attention_shape(20, 1, 128, 60_000, MAX_SMEM).unwrap_err();
    assert!(err.to_string().contains("max_context"), "{err}");
    assert!(attention_shape(20, 70_000, 128, 64, MAX_SMEM).is_err());
    assert!(attention_shape(0, 1, 128, 64, MAX_SMEM).is_err());
}

fn deq(acc: CUdeviceptr, ld: u32) -> Deq {
    Deq {
        acc,
        x_scale: 0x1000,
        w_scale: 0x2000,
        bias: 0,
        ld,
        kind: Deq::INT32_SUMS,
    }
}

fn op(input: RowInput, output: RowOutput) -> RowOp {
    RowOp {
        input,
        x: 0x4000,
        ld_x: 64,
        norms: [Some((0x5000, 1e-5)), None],
        output,
        ld_out: 64,
        n: 64,
        tokens: 2,
    }
}

#[test]
fn row_params_encode_modes_and_outputs() {
    let i8_out = RowOutput::I8 {
        q: 0x6000,
        scale: 0x7000,
    };
    let p = op(RowInput::Row { rows: Some(0x8000) }, i8_out)
        .params()
        .unwrap();
    assert_eq!(
        (p.mode, p.out_kind, p.rows, p.norm1, p.norm2),
        (0, 1, 0x8000, 0x5000, 0)
    );
    assert_eq!((p.n, p.ld_x, p.ld_out, p.eps1), (64, 64, 64, 1e-5));
    let p = op(RowInput::Residual(deq(0x9000, 64)), RowOutput::None)
        .params()
        .unwrap();
    assert_eq!((p.mode, p.out_kind, p.a.acc), (1, 0, 0x9000));
    let gated = RowInput::Gated {
        gate: deq(0x9000, 128),
        up: deq(0x9100, 128),
        silu: true,
    };
    for (dtype, kind) in [(DType::F32, 2), (DType::F16, 3), (DType::BF16, 4)] {
        let out = RowOutput::Float { out: 0xa000, dtype };
        let p = op(gated, out).params().unwrap();
        assert_eq!((p.mode, p.act, p.out_kind, p.b.acc), (2, 1, kind, 0x9100));
    }
}

#[test]
fn f32_values_need_no_scales_and_unknown_kinds_are_errors() {
    // A dense-bf16 GEMM's f32 outputs: no x_scale or w_scale (0), a bias still allowed.
    let values = Deq {
        x_scale: 0,
        w_scale: 0,
        bias: 0xb000,
        kind: Deq::F32_VALUES,
        ..deq(0x9000, 64)
    };
    let p = op(RowInput::Residual(values), RowOutput::None)
        .params()
        .unwrap();
    assert_eq!(
        (p.a.kind, p.a.bias, p.a.x_scale),
        (Deq::F32_VALUES, 0xb000, 0)
    );
    // The same without scales as int32 sums is an error naming the scale.
    let sums = Deq {
        kind: Deq::INT32_SUMS,
        ..values
    };
    let err = op(RowInput::Residual(sums), RowOutput::None)
        .params()
        .unwrap_err()
        .to_string();
    assert!(err.contains("x_scale"), "{err}");
    let unknown = Deq { kind: 7, ..values };
    let err = op(RowInput::Residual(unknown), RowOutput::None)
        .params()
        .unwrap_err()
        .to_string();
    assert!(err.contains("Deq kind") && err.contains('7'), "{err}");
}

#[test]
fn row_params_reject_what_the_kernel_cannot_take() {
    let i8_out = RowOutput::I8 {
        q: 0x6000,
        scale: 0x7000,
    };
    let row = RowInput::Row { rows: None };
    let cases: Vec<(RowOp, &str)> = vec![
        (
            RowOp {
                x: 0,
                ..op(row, i8_out)
            },
            "x",
        ),
        (
            RowOp {
                x: 0x4002,
                ..op(row, i8_out)
            },
            "x",
        ),
        (
            RowOp {
                ld_x: 63,
                ..op(row, i8_out)
            },
            "ld_x",
        ),
        (
            RowOp {
                ld_out: 10,
                ..op(row, i8_out)
            },
            "ld_out",
        ),
        (op(RowInput::Residual(deq(0x9000, 32)), i8_out), "acc ld"),
        (op(RowInput::Residual(deq(0, 64)), i8_out), "acc"),
        (
            op(
                row,
                RowOutput::I8 {
                    q: 0x6000,
                    scale: 0x7001,
                },
            ),
            "out_scale",
        ),
        (
            op(
                row,
                RowOutput::Float {
                    out: 0xa000,
                    dtype: DType::I32,
                },
            ),
            "out",
        ),
        (
            RowOp {
                norms: [Some((0x5001, 1e-5)), None],
                ..op(row, i8_out)
            },
            "norm",
        ),
    ];
    for (o, needle) in cases {
        let err = o.params().unwrap_err().to_string();
        assert!(err.contains(needle), "{needle}: {err}");
    }
}

#[test]
fn heads_must_group_evenly() {
    check_heads(20, 5, 128).unwrap();
    assert!(check_heads(20, 6, 128).is_err());
    assert!(check_heads(0, 1, 128).is_err());
}

/// The kernels on a GPU against the CPU engine's formulas.
mod gpu {
    use std::sync::Arc;

    use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DeviceRepr};
    use half::f16;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use super::super::super::Gpu;
    use super::*;
    use crate::quant::quantize_activations_i8;

    struct Bench {
        gpu: Gpu,
        stream: Arc<CudaStream>,
        rng: StdRng,
    }

    fn setup() -> Bench {
        let gpu = Gpu::new(0).expect("a CUDA GPU");
        let stream = gpu.context().new_stream().unwrap();
        Bench {
            gpu,
            stream,
            rng: StdRng::seed_from_u64(rand::random()),
        }
    }

    impl Bench {
        fn up<T: DeviceRepr>(&self, v: &[T]) -> (CudaSlice<T>, CUdeviceptr) {
            let s = self.stream.clone_htod(v).unwrap();
            let p = s.device_ptr(&self.stream).0;
            (s, p)
        }
        fn down<T: DeviceRepr + Default + Clone>(&self, s: &CudaSlice<T>) -> Vec<T> {
            self.stream.synchronize().unwrap();
            self.stream.clone_dtoh(s).unwrap()
        }
        fn floats(&mut self, n: usize, scale: f32) -> Vec<f32> {
            (0..n)
                .map(|_| self.rng.random_range(-1.0f32..1.0) * scale)
                .collect()
        }
    }

    /// The CPU engine's RMSNorm (engine/forward.rs `rmsnorm`).
    fn rmsnorm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
        let ms =
            (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64) as f32;
        let r = 1.0 / (ms + eps).sqrt();
        x.iter().zip(w).map(|(&v, &g)| g * (v * r)).collect()
    }

    fn silu(x: f32) -> f32 {
        x / (1.0 + (-x).exp())
    }

    fn relu2(x: f32) -> f32 {
        let r = x.max(0.0);
        r * r
    }

    /// int8 codes equal, or (`loose`) within one step where expf rounds differently.
    fn assert_codes(got: &[i8], want: &[i8], loose: bool) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let d = (i16::from(*g) - i16::from(*w)).abs();
            assert!(d == 0 || (loose && d == 1), "code {i}: {g} vs {w}");
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn row_norm_quant_matches_the_cpu() {
        let mut b = setup();
        for n in [1usize, 37, 2560, 6913] {
            for mode in 0..3 {
                let tokens = 3;
                let x = b.floats(tokens * n, 3.0);
                let (w1, w2) = (b.floats(n, 1.0), b.floats(n, 1.0));
                let acc: Vec<i32> = (0..2 * tokens * n)
                    .map(|_| b.rng.random_range(-5000..5000))
                    .collect();
                let xs = b.floats(tokens, 0.01);
                let ws = b.floats(2 * n, 0.05);
                let bias = b.floats(2 * n, 0.1);
                let (x_d, xp) = b.up(&x);
                let (_a, ap) = b.up(&acc);
                let (_s, sp) = b.up(&xs);
                let (_w, wp) = b.up(&ws);
                let (_bi, bp) = b.up(&bias);
                let (_n1, n1p) = b.up(&w1);
                let (_n2, n2p) = b.up(&w2);
                let (q_d, qp) = b.up(&vec![0x55i8; tokens * n]);
                let (sc_d, scp) = b.up(&vec![f32::NAN; tokens]);
                let part = |col: usize, bias: bool| Deq {
                    acc: ap + 4 * col as u64,
                    x_scale: sp,
                    w_scale: wp + 4 * col as u64,
                    bias: if bias { bp + 4 * col as u64 } else { 0 },
                    ld: (2 * n) as u32,
                    kind: Deq::INT32_SUMS,
                };
                let silu_mode = n % 2 == 1;
                let input = match mode {
                    0 => RowInput::Row { rows: None },
                    1 => RowInput::Residual(part(0, true)),
                    _ => RowInput::Gated {
                        gate: part(0, false),
                        up: part(n, false),
                        silu: silu_mode,
                    },
                };
                let o = RowOp {
                    input,
                    x: if mode == 2 { 0 } else { xp },
                    ld_x: n,
                    norms: [Some((n1p, 1e-5)), Some((n2p, 1e-6))],
                    output: RowOutput::I8 { q: qp, scale: scp },
                    ld_out: n,
                    n,
                    tokens,
                };
                // SAFETY: every buffer holds what `o` describes, on this GPU.
                unsafe { b.gpu.row_norm_quant_raw(&o, b.stream.cu_stream()) }.unwrap();
                // The CPU: build the rows, two norms, quantize.
                let mut rows = Vec::with_capacity(tokens * n);
                let mut x_after = x.clone();
                for t in 0..tokens {
                    let d = |c: usize, col: usize, with_bias: bool| {
                        let v = (acc[t * 2 * n + col + c] as f32 * xs[t]) * ws[col + c];
                        if with_bias {
                            v + bias[col + c]
                        } else {
                            v
                        }
                    };
                    for c in 0..n {
                        let v = match mode {
                            0 => x[t * n + c],
                            1 => {
                                x_after[t * n + c] = x[t * n + c] + d(c, 0, true);
                                x_after[t * n + c]
                            }
                            _ => {
                                let act = if silu_mode { silu } else { relu2 };
                                act(d(c, 0, false)) * d(c, n, false)
                            }
                        };
                        rows.push(v);
                    }
                }
                let normed: Vec<f32> = rows
                    .chunks(n)
                    .flat_map(|r| rmsnorm(&rmsnorm(r, &w1, 1e-5), &w2, 1e-6))
                    .collect();
                let want = quantize_activations_i8(&normed, tokens, n).unwrap();
                let loose = mode == 2 && silu_mode;
                assert_codes(&b.down(&q_d), &want.q, loose);
                let scales = b.down(&sc_d);
                for (g, w) in scales.iter().zip(&want.scale) {
                    assert!(
                        g == w || (loose && (g - w).abs() <= 1e-6 * w.abs()),
                        "{g} {w}"
                    );
                }
                if mode == 1 {
                    assert_eq!(b.down(&x_d), x_after, "residual n {n}");
                }
            }
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn row_norm_float_outputs_gather_rows() {
        let mut b = setup();
        let (tokens, n) = (5, 300);
        let x = b.floats(tokens * n, 2.0);
        let w = b.floats(n, 1.0);
        let (_x, xp) = b.up(&x);
        let (_w, wp) = b.up(&w);
        let rows = [4u32, 1];
        let (_r, rp) = b.up(&rows);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let (out_d, op) = b.up(&vec![0xffu8; rows.len() * n * dtype.size()]);
            let o = RowOp {
                input: RowInput::Row { rows: Some(rp) },
                x: xp,
                ld_x: n,
                norms: [Some((wp, 1e-5)), None],
                output: RowOutput::Float { out: op, dtype },
                ld_out: n,
                n,
                tokens: rows.len(),
            };
            // SAFETY: the buffers hold what `o` describes.
            unsafe { b.gpu.row_norm_quant_raw(&o, b.stream.cu_stream()) }.unwrap();
            let got = decode(&b.down(&out_d), dtype);
            for (i, &r) in rows.iter().enumerate() {
                let r = r as usize;
                let want = rmsnorm(&x[r * n..(r + 1) * n], &w, 1e-5);
                let want = round(&want, dtype);
                assert_eq!(&got[i * n..(i + 1) * n], &want[..], "{dtype:?}");
            }
        }
    }

    /// Little-endian values of `dtype` as f32.
    fn decode(bytes: &[u8], dtype: DType) -> Vec<f32> {
        match dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }

    /// `v` rounded to `dtype` (round to nearest even, as cvt.rn).
    fn round(v: &[f32], dtype: DType) -> Vec<f32> {
        v.iter()
            .map(|&x| match dtype {
                DType::F16 => f16::from_f32(x).to_f32(),
                DType::BF16 => half::bf16::from_f32(x).to_f32(),
                _ => x,
            })
            .collect()
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn rope_and_kv_append_match_the_cpu() {
        let mut b = setup();
        let (heads, kv_heads, hd, max_ctx, slots) = (6usize, 2usize, 10usize, 9usize, 3usize);
        let (qd, kvd) = (heads * hd, kv_heads * hd);
        let tokens = 4;
        let ld = qd + 2 * kvd + 3;
        let acc: Vec<i32> = (0..tokens * ld)
            .map(|_| b.rng.random_range(-900..900))
            .collect();
        let xs = b.floats(tokens, 0.02);
        let ws = b.floats(qd + 2 * kvd, 0.1);
        let bias = b.floats(qd + 2 * kvd, 0.1);
        let table: Vec<f32> = (0..max_ctx * hd / 2)
            .flat_map(|i| {
                let a = i as f32 * 0.37;
                [a.cos(), a.sin()]
            })
            .collect();
        let pos = [0u32, 8, 3, 5];
        let slot = [2u32, 0, 1, 2];
        let (_a, ap) = b.up(&acc);
        let (_s, sp) = b.up(&xs);
        let (_w, wp) = b.up(&ws);
        let (_bi, bp) = b.up(&bias);
        let (_t, tp) = b.up(&table);
        let (_p, pp) = b.up(&pos);
        let (_sl, slp) = b.up(&slot);
        let (q_d, qp) = b.up(&vec![f32::NAN; tokens * qd]);
        let cache_len = slots * max_ctx * kvd;
        let (k_d, kp) = b.up(&vec![0xffffu16; cache_len]);
        let (v_d, vp) = b.up(&vec![0xffffu16; cache_len]);
        let part = |col: usize| Deq {
            acc: ap + 4 * col as u64,
            x_scale: sp,
            w_scale: wp + 4 * col as u64,
            bias: bp + 4 * col as u64,
            ld: ld as u32,
            kind: Deq::INT32_SUMS,
        };
        let p = RopeParams {
            q: part(0),
            k: part(qd),
            v: part(qd + kvd),
            rope: tp,
            pos: pp,
            slot: slp,
            q_out: qp,
            k_cache: kp,
            v_cache: vp,
            heads: heads as u32,
            kv_heads: kv_heads as u32,
            head_dim: hd as u32,
            max_context: max_ctx as u32,
        };
        // SAFETY: the buffers hold what `p` describes; positions < max_context, slots < 3.
        unsafe { b.gpu.rope_kv_append_raw(&p, tokens, b.stream.cu_stream()) }.unwrap();
        let (q, k, v) = (b.down(&q_d), b.down(&k_d), b.down(&v_d));
        let half = hd / 2;
        for t in 0..tokens {
            let d = |col: usize| ((acc[t * ld + col] as f32 * xs[t]) * ws[col]) + bias[col];
            let at = ((slot[t] as usize * max_ctx) + pos[t] as usize) * kvd;
            let rot = |base: usize, width: usize| -> Vec<f32> {
                let mut out = vec![0f32; width];
                for h in 0..width / hd {
                    for i in 0..half {
                        let (c, s) = (
                            table[(pos[t] as usize * half + i) * 2],
                            table[(pos[t] as usize * half + i) * 2 + 1],
                        );
                        let (a, bb) = (d(base + h * hd + i), d(base + h * hd + i + half));
                        out[h * hd + i] = a * c - bb * s;
                        out[h * hd + i + half] = bb * c + a * s;
                    }
                }
                out
            };
            assert_eq!(&q[t * qd..(t + 1) * qd], &rot(0, qd)[..], "q of token {t}");
            let want_k: Vec<u16> = rot(qd, kvd)
                .iter()
                .map(|&x| f16::from_f32(x).to_bits())
                .collect();
            assert_eq!(&k[at..at + kvd], &want_k[..], "k of token {t}");
            let want_v: Vec<u16> = (0..kvd)
                .map(|c| f16::from_f32(d(qd + kvd + c)).to_bits())
                .collect();
            assert_eq!(&v[at..at + kvd], &want_v[..], "v of token {t}");
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn attention_matches_an_f64_softmax() {
        let mut b = setup();
        for (heads, kv_heads, hd, max_ctx) in
            [(4usize, 2usize, 10usize, 40usize), (20, 5, 128, 700)]
        {
            let (slots, qd, kvd) = (2usize, heads * hd, kv_heads * hd);
            let pos = [0u32, (max_ctx - 1) as u32, 17];
            let slot = [1u32, 0, 1];
            let tokens = pos.len();
            let q = b.floats(tokens * qd, 1.0);
            let kv_len = slots * max_ctx * kvd;
            let kf: Vec<f16> = b
                .floats(kv_len, 2.0)
                .iter()
                .map(|&x| f16::from_f32(x))
                .collect();
            let vf: Vec<f16> = b
                .floats(kv_len, 1.0)
                .iter()
                .map(|&x| f16::from_f32(x))
                .collect();
            let (_q, qp) = b.up(&q);
            let kb: Vec<u16> = kf.iter().map(|x| x.to_bits()).collect();
            let vb: Vec<u16> = vf.iter().map(|x| x.to_bits()).collect();
            let (_k, kp) = b.up(&kb);
            let (_v, vp) = b.up(&vb);
            let (_p, pp) = b.up(&pos);
            let (_s, sp) = b.up(&slot);
            let (out_d, op) = b.up(&vec![f32::NAN; tokens * qd]);
            let scaling = (hd as f32).powf(-0.5);
            let p = AttnParams {
                q: qp,
                k_cache: kp,
                v_cache: vp,
                pos: pp,
                slot: sp,
                out: op,
                heads: heads as u32,
                kv_heads: kv_heads as u32,
                head_dim: hd as u32,
                max_context: max_ctx as u32,
                scaling,
                pad: 0,
            };
            // SAFETY: the buffers hold what `p` describes.
            unsafe { b.gpu.attention_raw(&p, tokens, b.stream.cu_stream()) }.unwrap();
            let out = b.down(&out_d);
            for t in 0..tokens {
                for h in 0..heads {
                    let kvh = h / (heads / kv_heads);
                    let row = |j: usize| (slot[t] as usize * max_ctx + j) * kvd + kvh * hd;
                    let qh = &q[t * qd + h * hd..][..hd];
                    let scores: Vec<f64> = (0..=pos[t] as usize)
                        .map(|j| {
                            let k = &kf[row(j)..row(j) + hd];
                            qh.iter()
                                .zip(k)
                                .map(|(a, b)| f64::from(*a) * b.to_f64())
                                .sum::<f64>()
                                * f64::from(scaling)
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let got = &out[t * qd + h * hd..][..hd];
                    let want: Vec<f64> = (0..hd)
                        .map(|d| {
                            e.iter()
                                .enumerate()
                                .map(|(j, p)| p / sum * vf[row(j) + d].to_f64())
                                .sum()
                        })
                        .collect();
                    let scale = want.iter().fold(0f64, |a, b| a.max(b.abs())).max(1e-3);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (f64::from(*g) - w).abs() <= 1e-5 * scale,
                            "t {t} h {h}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    /// The greedy sampler's pick (engine/sampler.rs `argmax`).
    fn first_max(x: &[f32]) -> u32 {
        let (mut best, mut best_v) = (0, f32::NEG_INFINITY);
        for (i, &v) in x.iter().enumerate() {
            if v > best_v {
                (best, best_v) = (i, v);
            }
        }
        best as u32
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn argmax_picks_the_first_largest_non_nan() {
        let mut b = setup();
        let n = 128_256;
        let mut rows = [
            b.floats(n, 10.0),
            b.floats(n, 10.0),
            vec![f32::NEG_INFINITY; n],
            vec![f32::NAN; n],
        ];
        rows[0][77_000] = 50.0; // a tie: the first wins
        rows[0][5] = 50.0;
        rows[1][0] = f32::NAN;
        rows[1][n - 1] = 99.0;
        rows[2][n - 2] = f32::NAN;
        let flat: Vec<f32> = rows.concat();
        let (_l, lp) = b.up(&flat);
        let (out_d, op) = b.up(&vec![u32::MAX; rows.len()]);
        // SAFETY: `flat` holds rows x n, `out` one u32 per row.
        unsafe {
            b.gpu
                .argmax_raw(lp, rows.len(), n, n, op, b.stream.cu_stream())
        }
        .unwrap();
        let want: Vec<u32> = rows.iter().map(|r| first_max(r)).collect();
        assert_eq!(want, [5, n as u32 - 1, 0, 0]);
        assert_eq!(b.down(&out_d), want);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn embedding_gather_and_lm_head() {
        let mut b = setup();
        let (vocab, hidden) = (301usize, 96usize);
        let table = b.floats(vocab * hidden, 1.0);
        let tok = [300u32, 0, 7, 7];
        let (_t, tkp) = b.up(&tok);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let values = round(&table, dtype);
            let bytes: Vec<u8> = match dtype {
                DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                DType::F16 => values
                    .iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => values
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            };
            let (_tb, tp) = b.up(&bytes);
            let (x_d, xp) = b.up(&vec![f32::NAN; tok.len() * hidden]);
            // SAFETY: ids < vocab; x holds tokens x hidden.
            unsafe {
                b.gpu
                    .embed_gather_raw(tp, dtype, tkp, xp, tok.len(), hidden, b.stream.cu_stream())
            }
            .unwrap();
            let x = b.down(&x_d);
            for (i, &t) in tok.iter().enumerate() {
                let t = t as usize;
                assert_eq!(
                    &x[i * hidden..(i + 1) * hidden],
                    &values[t * hidden..(t + 1) * hidden]
                );
            }
            // lm_head over the gathered rows, in the table's type.
            let xin = round(&x, dtype);
            let xbytes: Vec<u8> = match dtype {
                DType::F32 => xin.iter().flat_map(|v| v.to_le_bytes()).collect(),
                DType::F16 => xin
                    .iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => xin
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            };
            let (_xb, xbp) = b.up(&xbytes);
            let (lg_d, lgp) = b.up(&vec![f32::NAN; tok.len() * vocab]);
            // SAFETY: table vocab x hidden, x tokens x hidden, logits tokens x vocab.
            unsafe {
                b.gpu
                    .lm_head_raw(tp, dtype, xbp, tok.len(), vocab, hidden, lgp, &b.stream)
            }
            .unwrap();
            let got = b.down(&lg_d);
            let mut err = 0f64;
            let mut norm = 0f64;
            for t in 0..tok.len() {
                for v in 0..vocab {
                    let want: f64 = (0..hidden)
                        .map(|k| f64::from(values[v * hidden + k]) * f64::from(xin[t * hidden + k]))
                        .sum();
                    err += (f64::from(got[t * vocab + v]) - want).powi(2);
                    norm += want * want;
                }
            }
            assert!(
                (err / norm).sqrt() <= 1e-5,
                "{dtype:?}: {}",
                (err / norm).sqrt()
            );
        }
    }
}

/// `sample_f32` against the CPU sampler (engine/sampler/pick.rs): the same token, exactly.
mod sampling {
    use std::sync::Arc;

    use cudarc::driver::{CudaStream, DevicePtr, DeviceRepr};
    use rand::{rngs::StdRng, Rng, SeedableRng};

    use super::super::super::Gpu;
    use super::super::SampleRow;
    use crate::engine::{draw_row, Draw};

    #[test]
    fn sample_rows_mirror_the_draw() {
        let d = Draw {
            temperature: 0.5,
            top_k: 3,
            top_p24: 7,
            penalty: 1.25,
            seed: 1,
            stream: 2,
            step: 3,
        };
        let r = SampleRow::new(&d, 9);
        assert_eq!(
            (r.seed, r.stream, r.step, r.top_k, r.top_p24, r.slot),
            (1, 2, 3, 3, 7, 9)
        );
        assert_eq!((r.temperature, r.penalty), (0.5, 1.25));
    }

    fn up<T: DeviceRepr>(s: &Arc<CudaStream>, v: &[T]) -> (cudarc::driver::CudaSlice<T>, u64) {
        let b = s.clone_htod(v).unwrap();
        let p = b.device_ptr(s).0;
        (b, p)
    }

    /// Logits with ties, NaN, ±0 and -inf, or occasionally degenerate rows.
    fn logits(rng: &mut StdRng, n: usize) -> Vec<f32> {
        match rng.random_range(0..40) {
            0 => return vec![f32::NAN; n],
            1 => return vec![f32::NEG_INFINITY; n],
            2 => return vec![1.5; n],
            _ => {}
        }
        let palette: Vec<f32> = (0..8).map(|_| rng.random_range(-4.0f32..4.0)).collect();
        let mut x: Vec<f32> = (0..n)
            .map(|_| match rng.random_range(0..24) {
                0 => f32::NAN,
                1 => -0.0,
                2 => 0.0,
                3 => f32::NEG_INFINITY,
                4..=9 => palette[rng.random_range(0..8)],
                _ => rng.random_range(-10.0f32..10.0),
            })
            .collect();
        if rng.random_range(0..30) == 0 {
            x[rng.random_range(0..n)] = f32::INFINITY;
        }
        x
    }

    fn draw(rng: &mut StdRng, n: usize) -> Draw {
        Draw {
            temperature: [0.0, 0.05, 0.3, 0.8, 1.0, 2.5][rng.random_range(0..6)],
            top_k: [0, 1, 2, 40, 1000, n as u32, n as u32 + 3][rng.random_range(0..7)],
            top_p24: [1 << 24, 15_938_355, 1 << 23, 1_677_722, 17][rng.random_range(0..5)],
            penalty: [1.0, 1.1, 1.3, 0.7][rng.random_range(0..4)],
            seed: rng.random(),
            stream: rng.random_range(0..8),
            step: rng.random_range(0..100_000),
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn the_kernel_draws_the_cpu_samplers_token() {
        let gpu = Gpu::new(0).expect("a CUDA GPU");
        let stream = gpu.context().new_stream().unwrap();
        let mut rng = StdRng::seed_from_u64(rand::random());
        let (rows, slots) = (64usize, 5usize);
        let mut cases = 0;
        for n in [1usize, 2, 7, 1000, 32_000, 128_256, 262_144] {
            let words = n.div_ceil(32);
            let launches = if n > 100_000 { 8 } else { 16 };
            for _ in 0..launches {
                let ld = n + rng.random_range(0..3);
                let mut flat = vec![f32::NAN; rows * ld];
                let mut draws = Vec::new();
                for r in 0..rows {
                    flat[r * ld..r * ld + n].copy_from_slice(&logits(&mut rng, n));
                    draws.push((draw(&mut rng, n), rng.random_range(0..slots) as u32));
                }
                let history: Vec<u32> = (0..slots * words)
                    .map(|_| rng.random::<u32>() & rng.random::<u32>() & rng.random::<u32>())
                    .collect();
                let params: Vec<SampleRow> =
                    draws.iter().map(|(d, s)| SampleRow::new(d, *s)).collect();
                let (_l, lp) = up(&stream, &flat);
                let (_p, pp) = up(&stream, &params);
                let (_h, hp) = up(&stream, &history);
                let (out, op) = up(&stream, &vec![u32::MAX; rows]);
                // SAFETY: `flat` holds rows x ld, `params` rows whose slots index `history`'s
                // `slots` bitmaps of `words`, `out` rows u32.
                unsafe { gpu.sample_raw(lp, rows, n, ld, pp, (hp, words), op, stream.cu_stream()) }
                    .unwrap();
                stream.synchronize().unwrap();
                let got = stream.clone_dtoh(&out).unwrap();
                for (r, (d, slot)) in draws.iter().enumerate() {
                    let s = *slot as usize;
                    let mut row = flat[r * ld..r * ld + n].to_vec();
                    let want = draw_row(&mut row, &history[s * words..(s + 1) * words], d);
                    assert_eq!(got[r], want, "vocab {n}, row {r}, {d:?}");
                    cases += 1;
                }
            }
        }
        assert!(cases > 5000);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn history_mark_sets_the_slots_bits() {
        let gpu = Gpu::new(0).expect("a CUDA GPU");
        let stream = gpu.context().new_stream().unwrap();
        let (slots, n) = (3usize, 1000usize);
        let words = n.div_ceil(32);
        let tok = [5u32, 999, 5, 64, 0];
        let slot = [0u32, 2, 2, 1, 2];
        let (_t, tp) = up(&stream, &tok);
        let (_s, sp) = up(&stream, &slot);
        let (h, hp) = up(&stream, &vec![0u32; slots * words]);
        // SAFETY: `tok` and `slot` hold 5 entries below n and slots; `h` slots bitmaps.
        unsafe { gpu.history_mark_raw((tp, sp, tok.len()), hp, words, stream.cu_stream()) }
            .unwrap();
        stream.synchronize().unwrap();
        let got = stream.clone_dtoh(&h).unwrap();
        let mut want = vec![0u32; slots * words];
        for (&t, &s) in tok.iter().zip(&slot) {
            want[s as usize * words + t as usize / 32] |= 1 << (t % 32);
        }
        assert_eq!(got, want);
    }
}
