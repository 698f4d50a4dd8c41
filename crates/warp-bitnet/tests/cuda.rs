//! GPU correctness. Run on a CUDA host: `cargo test --release -- --include-ignored`.
//!
//! Every check draws fresh random data, poisons the output first (0xFF bytes: NaN in
//! f16/bf16) and compares with a float64 reference by `||out - ref|| / ||ref||`:
//! within 1e-3 for f16 outputs and 1e-2 for bf16 outputs (bf16 rounding of the
//! output alone costs ~1.5e-3). The W2A8 integer accumulators must match exactly.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr};
use half::{bf16, f16};
use rand::{rngs::StdRng, Rng, SeedableRng};
use warp_bitnet::bench::{random_int2_matrix, random_matrix, reference_f64};
use warp_bitnet::cuda::{GemmArgs, Gpu, Route, SplitKernels};
use warp_bitnet::format::tiled;
use warp_bitnet::{cpu, quant, Activation, DType, Int2Matrix, PackedWeights, Scale, TernaryMatrix};

const ROWS: [usize; 4] = [1, 3, 127, 4097];
const COLS: [usize; 5] = [16, 48, 2560, 6912, 28672];

fn setup() -> (Gpu, Arc<CudaStream>, StdRng) {
    let gpu = Gpu::new(0).expect("a CUDA GPU");
    let stream = gpu.context().new_stream().unwrap();
    (gpu, stream, StdRng::seed_from_u64(rand::random()))
}

fn batches(rows: usize, cols: usize) -> &'static [usize] {
    if rows * cols > 10_000_000 {
        &[1, 9]
    } else {
        &[1, 3, 8, 17, 33, 130]
    }
}

/// The three scale kinds in turn.
fn scale_kind(i: usize, rows: usize, rng: &mut StdRng) -> Scale {
    match i % 3 {
        0 => Scale::None,
        1 => Scale::PerTensor(rng.random_range(0.01..2.0)),
        _ => Scale::PerRow((0..rows).map(|_| rng.random_range(0.01..2.0)).collect()),
    }
}

/// Random weights of either kind, with scale kind `i % 3`.
trait RandomWeights: PackedWeights + Sized {
    fn random(rng: &mut StdRng, rows: usize, cols: usize, i: usize) -> Self;
}

impl RandomWeights for TernaryMatrix {
    fn random(rng: &mut StdRng, rows: usize, cols: usize, i: usize) -> Self {
        let s = scale_kind(i, rows, rng);
        random_matrix(rng, rows, cols).with_scale(s).unwrap()
    }
}

impl RandomWeights for Int2Matrix {
    fn random(rng: &mut StdRng, rows: usize, cols: usize, i: usize) -> Self {
        let words = random_int2_matrix(rng, rows, cols).words().to_vec();
        Int2Matrix::from_words(rows, cols, words, scale_kind(i, rows, rng)).unwrap()
    }
}

/// f16 / bf16 values as f64.
fn host_f64<T: Activation>(v: &[T]) -> Vec<f64> {
    v.iter().map(|v| f64::from(v.to_f32())).collect()
}

/// A device buffer of f16 / bf16, copied back as f64.
fn device_f64<T: Activation + DeviceRepr>(s: &Arc<CudaStream>, y: &CudaSlice<T>) -> Vec<f64> {
    host_f64(&s.clone_dtoh(y).unwrap())
}

fn rel_err(got: &[f64], want: &[f64]) -> f64 {
    assert!(
        got.iter().all(|v| v.is_finite()),
        "unwritten (NaN) or non-finite output"
    );
    let num: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn poison<T: DeviceRepr>(s: &Arc<CudaStream>, y: &mut CudaSlice<T>) {
    let n = y.num_bytes();
    let (p, _g) = y.device_ptr_mut(s);
    unsafe { cudarc::driver::result::memset_d8_async(p, 0xFF, n, s.cu_stream()) }.unwrap();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn layout_round_trips_through_the_device() {
    let (gpu, s, mut rng) = setup();
    for (rows, cols) in [
        (1, 16),
        (3, 48),
        (17, 200),
        (127, 2560),
        (4097, 130),
        (33, 1),
    ] {
        let w = random_matrix(&mut rng, rows, cols);
        let d = gpu.upload(&w, &s).unwrap();
        assert_eq!(
            d.download_tiled(&s).unwrap(),
            tiled::from_i2(w.words(), rows, cols).unwrap(),
            "{rows}x{cols}"
        );
        assert_eq!(gpu.download_i2(&d, &s).unwrap(), w.words(), "{rows}x{cols}");
        let w = Int2Matrix::random(&mut rng, rows, cols, 0);
        let d = gpu.upload(&w, &s).unwrap();
        assert_eq!(
            gpu.download_i2(&d, &s).unwrap(),
            w.words(),
            "INT2 {rows}x{cols}"
        );
    }
}

fn check_w2a16<
    W: RandomWeights,
    T: warp_bitnet::cuda::GpuFloat + Activation + cudarc::driver::ValidAsZeroBits,
>(
    tol: f64,
) {
    let (gpu, s, mut rng) = setup();
    let mut worst = 0f64;
    for (i, (&rows, &cols)) in ROWS
        .iter()
        .flat_map(|r| COLS.iter().map(move |c| (r, c)))
        .enumerate()
    {
        let w = W::random(&mut rng, rows, cols, i);
        let d = gpu.upload(&w, &s).unwrap();
        for &batch in batches(rows, cols) {
            let x: Vec<T> = (0..batch * cols)
                .map(|_| T::from_f32(rng.random_range(-2.0..2.0)))
                .collect();
            let bias: Option<Vec<T>> = (i % 2 == 1).then(|| {
                (0..rows)
                    .map(|_| T::from_f32(rng.random_range(-1.0..1.0)))
                    .collect()
            });
            let xd = s.clone_htod(&x).unwrap();
            let bd = bias.as_ref().map(|b| s.clone_htod(b).unwrap());
            let mut yd = s.alloc_zeros::<T>(batch * rows).unwrap();
            poison(&s, &mut yd);
            gpu.gemm(
                &d,
                &xd,
                batch,
                bd.as_ref().map(|b| b as &dyn DevicePtr<T>),
                &mut yd,
                &s,
            )
            .unwrap();
            let got = device_f64(&s, &yd);
            let xf: Vec<f64> = host_f64(&x);
            let bf: Option<Vec<f64>> = bias.map(|b| host_f64(&b));
            let want = reference_f64(&w, &xf, batch, bf.as_deref());
            let e = rel_err(&got, &want);
            assert!(
                e <= tol,
                "{rows}x{cols} batch {batch}: relative error {e:.2e} > {tol:.0e}"
            );
            worst = worst.max(e);
        }
    }
    eprintln!(
        "{:?} {:?} worst relative error {worst:.2e}",
        W::LEVELS,
        <T as Activation>::DTYPE
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn w2a16_f16_matches_float64() {
    check_w2a16::<TernaryMatrix, f16>(1e-3);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn w2a16_bf16_matches_float64() {
    check_w2a16::<TernaryMatrix, bf16>(1e-2);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int2_w2a16_f16_matches_float64() {
    check_w2a16::<Int2Matrix, f16>(1e-3);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int2_w2a16_bf16_matches_float64() {
    check_w2a16::<Int2Matrix, bf16>(1e-2);
}

/// One bf16 token on a large matrix takes the kernel that stages the row as f16,
/// rescaled by a power of two (gemm.cuh, `bf16_row_exponent`; chosen from 512 weight
/// tiles per SM, launch.rs): rows far outside f16's range, rows spread over many
/// octaves and rows with one outlier, with a bias and per-row scales, must keep bf16
/// accuracy. A small matrix (the bf16 decode) gets the same rows.
#[test]
#[ignore = "needs a CUDA GPU"]
fn single_token_bf16_keeps_the_bf16_range() {
    bf16_range::<TernaryMatrix>();
    bf16_range::<Int2Matrix>();
}

fn bf16_range<W: RandomWeights>() {
    let (gpu, s, mut rng) = setup();
    let cols: usize = 8192 - 40;
    let large = 16 * (512 * gpu.info().sm_count).div_ceil(cols.div_ceil(128));
    type Draw = Box<dyn Fn(&mut StdRng, usize) -> f32>;
    let times = |p: i32| move |r: &mut StdRng, _: usize| r.random_range(-2f32..2.0) * 2f32.powi(p);
    let kinds: [(&str, Draw); 6] = [
        ("2^100", Box::new(times(100))),
        ("2^30", Box::new(times(30))),
        ("2^-30", Box::new(times(-30))),
        ("2^-120", Box::new(times(-120))),
        (
            "octaves",
            Box::new(|r, _| r.random_range(-2f32..2.0) * 2f32.powi(r.random_range(-20..20))),
        ),
        (
            "outlier",
            Box::new(|r, k| {
                if k == 77 {
                    3e5
                } else {
                    r.random_range(-2f32..2.0)
                }
            }),
        ),
    ];
    let x: Vec<bf16> = kinds
        .iter()
        .flat_map(|(_, draw)| {
            (0..cols)
                .map(|k| bf16::from_f32(draw(&mut rng, k)))
                .collect::<Vec<_>>()
        })
        .collect();
    for rows in [127, large] {
        let w = W::random(&mut rng, rows, cols, 2);
        let d = gpu.upload(&w, &s).unwrap();
        let want = reference_f64(&w, &host_f64(&x), kinds.len(), None);
        for (i, (name, _)) in kinds.iter().enumerate() {
            // A bias of the outputs' own size (half of each), so that one applied before
            // the row's power of two is restored would show.
            let want = &want[i * rows..(i + 1) * rows];
            let bias: Vec<bf16> = want.iter().map(|&v| bf16::from_f64(v / 2.0)).collect();
            let want: Vec<f64> = want
                .iter()
                .zip(host_f64(&bias))
                .map(|(w, b)| w + b)
                .collect();
            let xd = s.clone_htod(&x[i * cols..(i + 1) * cols]).unwrap();
            let bd = s.clone_htod(&bias).unwrap();
            let mut yd = s.alloc_zeros::<bf16>(rows).unwrap();
            poison(&s, &mut yd);
            gpu.gemm(&d, &xd, 1, Some(&bd as &dyn DevicePtr<bf16>), &mut yd, &s)
                .unwrap();
            let e = rel_err(&device_f64(&s, &yd), &want);
            assert!(
                e <= 1e-2,
                "{:?} {rows}x{cols}, row {name}: relative error {e:.2e}",
                W::LEVELS
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn w2a8_integer_part_is_exact_and_epilogue_accurate() {
    check_w2a8::<TernaryMatrix>();
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn int2_w2a8_integer_part_is_exact_and_epilogue_accurate() {
    check_w2a8::<Int2Matrix>();
}

fn check_w2a8<W: RandomWeights>() {
    let (gpu, s, mut rng) = setup();
    for (i, (&rows, &cols)) in ROWS
        .iter()
        .flat_map(|r| COLS.iter().map(move |c| (r, c)))
        .enumerate()
    {
        let w = W::random(&mut rng, rows, cols, i);
        let d = gpu.upload(&w, &s).unwrap();
        for &batch in batches(rows, cols) {
            let q: Vec<i8> = (0..batch * cols).map(|_| rng.random()).collect();
            let xs: Vec<f32> = (0..batch).map(|_| rng.random_range(0.001..0.1)).collect();
            let (qd, xsd) = (s.clone_htod(&q).unwrap(), s.clone_htod(&xs).unwrap());
            let mut acc = s.alloc_zeros::<i32>(batch * rows).unwrap();
            poison(&s, &mut acc);
            gpu.gemm_w2a8::<i32>(&d, &qd, &xsd, batch, None, &mut acc, &s)
                .unwrap();
            let want = cpu::reference::gemm_i8_accumulate(&w, &q, batch).unwrap();
            assert_eq!(
                s.clone_dtoh(&acc).unwrap(),
                want,
                "{rows}x{cols} batch {batch}"
            );

            let mut y = s.alloc_zeros::<f16>(batch * rows).unwrap();
            poison(&s, &mut y);
            gpu.gemm_w2a8::<f16>(&d, &qd, &xsd, batch, None, &mut y, &s)
                .unwrap();
            let got = device_f64(&s, &y);
            let deq: Vec<f64> = q
                .iter()
                .enumerate()
                .map(|(k, &v)| f64::from(v) * f64::from(xs[k / cols]))
                .collect();
            let e = rel_err(&got, &reference_f64(&w, &deq, batch, None));
            assert!(
                e <= 1e-3,
                "{rows}x{cols} batch {batch}: relative error {e:.2e}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn device_quantizer_matches_the_cpu_bytes() {
    let (gpu, s, mut rng) = setup();
    // Vector path, rows longer than the registers keep (40000), and the scalar path (1001).
    for (batch, n) in [
        (1, 16),
        (3, 2560),
        (17, 28672),
        (2, 1000),
        (1, 40000),
        (2, 1001),
    ] {
        let x: Vec<f16> = (0..batch * n)
            .map(|_| f16::from_f32(rng.random_range(-30.0..30.0)))
            .collect();
        let want = quant::quantize_activations_i8(&x, batch, n).unwrap();
        let xd = s.clone_htod(&x).unwrap();
        let (mut q, mut sc) = (
            s.alloc_zeros::<i8>(batch * n).unwrap(),
            s.alloc_zeros::<f32>(batch).unwrap(),
        );
        gpu.quantize_i8(&xd, batch, n, &mut q, &mut sc, &s).unwrap();
        assert_eq!(s.clone_dtoh(&q).unwrap(), want.q);
        assert_eq!(s.clone_dtoh(&sc).unwrap(), want.scale);
        let xb: Vec<bf16> = x.iter().map(|v| bf16::from_f32(v.to_f32())).collect();
        let want = quant::quantize_activations_i8(&xb, batch, n).unwrap();
        let xd = s.clone_htod(&xb).unwrap();
        gpu.quantize_i8(&xd, batch, n, &mut q, &mut sc, &s).unwrap();
        assert_eq!(s.clone_dtoh(&q).unwrap(), want.q);
        assert_eq!(s.clone_dtoh(&sc).unwrap(), want.scale);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn strided_and_misaligned_activations_take_the_scalar_path_correctly() {
    let (mut gpu, s, mut rng) = setup();
    // Batch 12 takes the split kernel on sm_90 even for this small matrix.
    gpu.set_split_kernels(SplitKernels::Always);
    let (cols, ldx) = (1000, 1003);
    // 1 token: the single-token kernel; 5: the token-group kernel; 12: the split kernel (sm_90);
    // 70 tokens on 20000 rows (enough tiles to fill an H100): the prefill kernel's pre-pass,
    // element by element (sm_90a).
    for (rows, batch) in [(300usize, 1), (300, 5), (300, 12), (20_000, 70)] {
        let ldy = rows.next_multiple_of(512);
        let w = random_matrix(&mut rng, rows, cols);
        let d = gpu.upload(&w, &s).unwrap();
        // One extra element in front makes the base 2 bytes past 16-byte alignment.
        let buf: Vec<f16> = (0..1 + batch * ldx)
            .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
            .collect();
        let xd = s.clone_htod(&buf).unwrap();
        let mut yd = s.alloc_zeros::<f16>(batch * ldy).unwrap();
        poison(&s, &mut yd);
        let (xp, _g) = xd.device_ptr(&s);
        let (yp, _g2) = yd.device_ptr_mut(&s);
        let args = GemmArgs {
            x: xp + 2,
            x_dtype: DType::F16,
            ldx,
            y: yp,
            y_dtype: DType::F16,
            ldy,
            batch,
            bias: None,
            x_scale: None,
            quantize_x: false,
        };
        unsafe { gpu.gemm_raw(&d, &args, s.cu_stream()) }.unwrap();
        drop((_g, _g2));
        let y = s.clone_dtoh(&yd).unwrap();
        let xf: Vec<f64> = (0..batch * cols)
            .map(|i| f64::from(buf[1 + (i / cols) * ldx + i % cols].to_f32()))
            .collect();
        let want = reference_f64(&w, &xf, batch, None);
        let got: Vec<f64> = (0..batch * rows)
            .map(|i| f64::from(y[(i / rows) * ldy + i % rows].to_f32()))
            .collect();
        assert!(rel_err(&got, &want) <= 1e-3, "batch {batch}");
        // Columns past `rows` in each output row are left alone (still poisoned).
        assert!(y[rows].to_f32().is_nan());
    }
}

/// Every kernel (single token, 8, 16 and, for int8, 32 tokens per CTA, each row-tile count,
/// several token groups; on sm_90 the split-K cluster kernels for 16, 32 and 64 tokens, with
/// one and with several K slices, and the token-group kernels they replace; the prefill
/// kernels (mma.sync, and on sm_90a wgmma) from 65 tokens, with one and with several blocks
/// of 128 tokens) on odd
/// shapes: cheap enough for compute-sanitizer (scripts/gpu-check.sh).
/// The one exception, the bf16 single-token kernel for large matrices, needs more weights
/// than is cheap here: `single_token_bf16_keeps_the_bf16_range` covers it.
#[test]
#[ignore = "needs a CUDA GPU"]
fn every_kernel_on_small_odd_shapes() {
    every_kernel::<TernaryMatrix>();
    every_kernel::<Int2Matrix>();
}

fn every_kernel<W: RandomWeights>() {
    let (mut gpu, s, mut rng) = setup();
    // 20000 rows: enough row tiles that the planner takes the kernels with the most row
    // tiles per CTA (on GPUs of up to ~150 SMs); the small shapes take the others. The
    // split kernels take 2 K slices for 300 columns (2 and 1 k tiles), 8 slices of 1 for
    // 1000, 4 for 600 (2, 2, 1 and an empty one), a single slice for 3000 x 100. On
    // sm_90a the split and prefill kernels run with wgmma and with mma.sync; the runs with
    // split kernels take a prefill kernel for 100 and 257 tokens. 700 x 2900 at 257 tokens
    // (9 tiles of 23 k tiles) splits K over 8 CTAs per tile on an H100: slices of 3, the
    // last of 2.
    for (i, (rows, cols), (split, wgmma), batches) in [
        (37, 300),
        (129, 1000),
        (129, 600),
        (20_000, 300),
        (3000, 100),
        (700, 2900),
    ]
    .into_iter()
    .enumerate()
    .flat_map(|(i, shape)| {
        let all = &[1, 5, 9, 17, 40, 100, 257][..];
        [
            (i, shape, (SplitKernels::Always, true), all),
            (i, shape, (SplitKernels::Always, false), all),
            (i, shape, (SplitKernels::Never, true), &[9, 17, 40][..]),
        ]
    })
    // Enough row tiles that 16- and 32-token CTAs in clusters of 2 take several rounds.
    .chain([true, false].map(|wgmma| {
        (
            6,
            (70_000, 300),
            (SplitKernels::Always, wgmma),
            &[17, 33][..],
        )
    })) {
        gpu.set_split_kernels(split);
        gpu.set_wgmma(wgmma);
        gpu.set_prefill(split == SplitKernels::Always);
        // The kernels themselves, at every batch.
        gpu.set_dense(false);
        let w = W::random(&mut rng, rows, cols, i + 1);
        let d = gpu.upload(&w, &s).unwrap();
        for &batch in batches {
            // 20000 rows fill the GPU with prefill tiles from 100 tokens.
            if gpu.prefill() && rows == 20_000 && batch >= 100 {
                let k = gpu.gemm_kernel(&d, DType::F16, DType::F16, batch).unwrap();
                let want = if gpu.wgmma() { "_p128" } else { "_m128" };
                assert!(k.contains(want), "{k}");
            }
            if gpu.prefill() && gpu.wgmma() && rows == 700 && batch == 257 {
                let k = gpu.gemm_kernel(&d, DType::F16, DType::F16, batch).unwrap();
                assert!(k.contains("_p128k"), "{k}");
            }
            let xf: Vec<f32> = (0..batch * cols)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let x16: Vec<f16> = xf.iter().map(|&v| f16::from_f32(v)).collect();
            let xb: Vec<bf16> = xf.iter().map(|&v| bf16::from_f32(v)).collect();
            let q: Vec<i8> = (0..batch * cols).map(|_| rng.random()).collect();
            let xs: Vec<f32> = vec![0.01; batch];
            let want = |x: Vec<f64>| reference_f64(&w, &x, batch, None);
            let (xd, xbd, qd, xsd) = (
                s.clone_htod(&x16).unwrap(),
                s.clone_htod(&xb).unwrap(),
                s.clone_htod(&q).unwrap(),
                s.clone_htod(&xs).unwrap(),
            );
            let mut y = s.alloc_zeros::<f16>(batch * rows).unwrap();
            poison(&s, &mut y);
            gpu.gemm(&d, &xd, batch, None, &mut y, &s).unwrap();
            let got = device_f64(&s, &y);
            let e = rel_err(&got, &want(host_f64(&x16)));
            assert!(
                e <= 1e-3,
                "f16 {rows}x{cols} batch {batch} split kernels {split:?}, wgmma {wgmma}: {e:.2e}"
            );
            let mut yb = s.alloc_zeros::<bf16>(batch * rows).unwrap();
            poison(&s, &mut yb);
            gpu.gemm(&d, &xbd, batch, None, &mut yb, &s).unwrap();
            let got = device_f64(&s, &yb);
            let e = rel_err(&got, &want(host_f64(&xb)));
            assert!(
                e <= 1e-2,
                "bf16 {rows}x{cols} batch {batch} split kernels {split:?}, wgmma {wgmma}: {e:.2e}"
            );
            let mut acc = s.alloc_zeros::<i32>(batch * rows).unwrap();
            poison(&s, &mut acc);
            gpu.gemm_w2a8::<i32>(&d, &qd, &xsd, batch, None, &mut acc, &s)
                .unwrap();
            let exact = cpu::reference::gemm_i8_accumulate(&w, &q, batch).unwrap();
            assert_eq!(
                s.clone_dtoh(&acc).unwrap(),
                exact,
                "i8 {rows}x{cols} batch {batch} split kernels {split:?}, wgmma {wgmma}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn misaligned_int8_activations_are_exact() {
    let (mut gpu, s, mut rng) = setup();
    // Batch 12 takes the split kernel on sm_90 even for this small matrix.
    gpu.set_split_kernels(SplitKernels::Always);
    let (cols, ldx) = (1000, 1001);
    // 70 tokens on 20000 rows: the prefill kernel (sm_90a).
    for (rows, batch) in [(200, 1), (200, 3), (200, 12), (20_000, 70)] {
        let w = random_matrix(&mut rng, rows, cols);
        let d = gpu.upload(&w, &s).unwrap();
        // One byte in front: the base is 1 byte past alignment.
        let buf: Vec<i8> = (0..1 + batch * ldx).map(|_| rng.random()).collect();
        let scales: Vec<f32> = vec![1.0; batch];
        let (xd, sd) = (s.clone_htod(&buf).unwrap(), s.clone_htod(&scales).unwrap());
        let mut yd = s.alloc_zeros::<i32>(batch * rows).unwrap();
        poison(&s, &mut yd);
        let (xp, _g) = xd.device_ptr(&s);
        let (sp, _g1) = sd.device_ptr(&s);
        let (yp, _g2) = yd.device_ptr_mut(&s);
        let args = GemmArgs {
            x: xp + 1,
            x_dtype: DType::I8,
            ldx,
            y: yp,
            y_dtype: DType::I32,
            ldy: rows,
            batch,
            bias: None,
            x_scale: Some(sp),
            quantize_x: false,
        };
        unsafe { gpu.gemm_raw(&d, &args, s.cu_stream()) }.unwrap();
        drop((_g, _g1, _g2));
        let q: Vec<i8> = (0..batch * cols)
            .map(|i| buf[1 + (i / cols) * ldx + i % cols])
            .collect();
        let want = cpu::reference::gemm_i8_accumulate(&w, &q, batch).unwrap();
        assert_eq!(s.clone_dtoh(&yd).unwrap(), want, "batch {batch}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cpu_and_gpu_backends_agree() {
    let (gpu, s, mut rng) = setup();
    let (rows, cols, batch) = (777, 2560, 4);
    let w = TernaryMatrix::random(&mut rng, rows, cols, 2);
    let x: Vec<f16> = (0..batch * cols)
        .map(|_| f16::from_f32(rng.random_range(-1.0..1.0)))
        .collect();
    let mut y_cpu = vec![f16::ZERO; batch * rows];
    cpu::reference::gemm(&w, &x, batch, None, &mut y_cpu).unwrap();
    let d = gpu.upload(&w, &s).unwrap();
    let xd = s.clone_htod(&x).unwrap();
    let mut yd = s.alloc_zeros::<f16>(batch * rows).unwrap();
    gpu.gemm(&d, &xd, batch, None, &mut yd, &s).unwrap();
    let a: Vec<f64> = host_f64(&y_cpu);
    let b = device_f64(&s, &yd);
    assert!(rel_err(&b, &a) <= 1e-3);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn wrong_lengths_are_errors() {
    let (gpu, s, mut rng) = setup();
    let w = random_matrix(&mut rng, 64, 256);
    let d = gpu.upload(&w, &s).unwrap();
    let x = s.alloc_zeros::<f16>(255).unwrap();
    let mut y = s.alloc_zeros::<f16>(64).unwrap();
    assert!(gpu.gemm(&d, &x, 1, None, &mut y, &s).is_err());
}

/// The single-token kernels that quantize their own activations give exactly the bytes
/// of the two-launch path (quantize_i8, then the int8 GEMM), for both weight kinds; a row
/// too long for their shared memory on any GPU (200,000 columns; the H100's kernel holds
/// 195,200) takes the two launches inside `gemv_quantized`, as `Gpu::route_quantized` says.
#[test]
#[ignore = "needs a CUDA GPU"]
fn quantizing_gemv_equals_quantize_then_gemm() {
    fused_equals_two_launches::<TernaryMatrix, f16>();
    fused_equals_two_launches::<TernaryMatrix, bf16>();
    fused_equals_two_launches::<Int2Matrix, f16>();
    fused_equals_two_launches::<Int2Matrix, bf16>();
}

fn fused_equals_two_launches<
    W: RandomWeights,
    T: warp_bitnet::cuda::GpuFloat
        + Activation
        + cudarc::driver::ValidAsZeroBits
        + PartialEq
        + std::fmt::Debug,
>() {
    let (gpu, s, mut rng) = setup();
    // Vector and scalar (cols % 8 != 0) staging, one k tile and many.
    let shapes = [
        (37, 300),
        (129, 1000),
        (2560, 6912),
        (640, 2560),
        (1, 16),
        (24, 200_000),
    ];
    for (i, (rows, cols)) in shapes.into_iter().enumerate() {
        let x = <T as warp_bitnet::cuda::GpuOut>::DTYPE;
        let route = gpu.route_quantized(rows, cols, W::LEVELS, x, 1);
        assert_eq!(
            route.unwrap() == Route::OneLaunch,
            cols < 200_000,
            "{rows}x{cols}"
        );
        let w = W::random(&mut rng, rows, cols, i);
        let d = gpu.upload(&w, &s).unwrap();
        let x: Vec<T> = (0..cols)
            .map(|_| T::from_f32(rng.random_range(-3.0..3.0)))
            .collect();
        let bias: Vec<T> = (0..rows)
            .map(|_| T::from_f32(rng.random_range(-1.0..1.0)))
            .collect();
        let (xd, bd) = (s.clone_htod(&x).unwrap(), s.clone_htod(&bias).unwrap());
        let (mut q, mut qs) = (
            s.alloc_zeros::<i8>(cols).unwrap(),
            s.alloc_zeros::<f32>(1).unwrap(),
        );
        gpu.quantize_i8(&xd, 1, cols, &mut q, &mut qs, &s).unwrap();
        let mut want = s.alloc_zeros::<T>(rows).unwrap();
        gpu.gemm_w2a8(
            &d,
            &q,
            &qs,
            1,
            Some(&bd as &dyn DevicePtr<T>),
            &mut want,
            &s,
        )
        .unwrap();
        let mut got = s.alloc_zeros::<T>(rows).unwrap();
        poison(&s, &mut got);
        gpu.gemv_quantized(&d, &xd, Some(&bd as &dyn DevicePtr<T>), &mut got, &s)
            .unwrap();
        assert_eq!(
            s.clone_dtoh(&got).unwrap(),
            s.clone_dtoh(&want).unwrap(),
            "{:?} {rows}x{cols}",
            W::LEVELS
        );
    }
}

/// The training path's one-pass quantize-and-pack gives the T2 words of the CPU
/// quantizer's ternary matrix (and of its transpose), for each weight dtype and scale kind.
#[test]
#[ignore = "needs a CUDA GPU"]
fn quantize_to_t2_matches_the_cpu_quantizer() {
    use warp_bitnet::format::i2;
    use warp_bitnet::quant::{quantize_ternary, WeightQuant};
    let (gpu, s, mut rng) = setup();
    for (rows, cols) in [(37, 300), (200, 1000), (16, 128), (1, 17)] {
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0f32..1.0))
            .collect();
        for method in [WeightQuant::AbsMean, WeightQuant::AbsMeanRow] {
            let m = quantize_ternary(&w, rows, cols, method).unwrap();
            let (scale, per_row) = match m.scale() {
                Scale::PerTensor(v) => (vec![*v], false),
                Scale::PerRow(v) => (v.clone(), true),
                Scale::None => unreachable!(),
            };
            let codes = m.to_ternary();
            let transposed: Vec<i8> = (0..cols * rows)
                .map(|i| codes[(i % rows) * cols + i / rows])
                .collect();
            let want = [
                tiled::from_i2(m.words(), rows, cols).unwrap(),
                tiled::from_i2(&i2::pack(&transposed, cols, rows).unwrap(), cols, rows).unwrap(),
            ];
            let wd16: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let (wd, sd) = (s.clone_htod(&w).unwrap(), s.clone_htod(&scale).unwrap());
            for (transpose, want) in [false, true].into_iter().zip(want) {
                let mut out = s.alloc_zeros::<u32>(want.len()).unwrap();
                let (wp, _g1) = wd.device_ptr(&s);
                let (sp, _g2) = sd.device_ptr(&s);
                let (op, _g3) = out.device_ptr_mut(&s);
                unsafe {
                    gpu.quantize_to_t2_raw(
                        wp,
                        DType::F32,
                        rows,
                        cols,
                        cols,
                        sp,
                        per_row,
                        transpose,
                        op,
                        s.cu_stream(),
                    )
                }
                .unwrap();
                drop((_g1, _g2, _g3));
                assert_eq!(
                    s.clone_dtoh(&out).unwrap(),
                    want,
                    "{rows}x{cols} {method:?} transpose {transpose}"
                );
            }
            // f16 weights: compare with the CPU quantizer given the same (rounded) values and scale.
            let w16: Vec<f32> = wd16.iter().map(|v| v.to_f32()).collect();
            let m16 = TernaryMatrix::from_ternary(
                rows,
                cols,
                &w16.iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let sc = if per_row { scale[i / cols] } else { scale[0] };
                        (v / sc).round_ties_even().clamp(-1.0, 1.0) as i8
                    })
                    .collect::<Vec<_>>(),
                Scale::None,
            )
            .unwrap();
            let dev16 = s.clone_htod(&wd16).unwrap();
            let mut out = s.alloc_zeros::<u32>(tiled::len_words(rows, cols)).unwrap();
            let (wp, _g1) = dev16.device_ptr(&s);
            let (sp, _g2) = sd.device_ptr(&s);
            let (op, _g3) = out.device_ptr_mut(&s);
            unsafe {
                gpu.quantize_to_t2_raw(
                    wp,
                    DType::F16,
                    rows,
                    cols,
                    cols,
                    sp,
                    per_row,
                    false,
                    op,
                    s.cu_stream(),
                )
            }
            .unwrap();
            drop((_g1, _g2, _g3));
            assert_eq!(
                s.clone_dtoh(&out).unwrap(),
                tiled::from_i2(m16.words(), rows, cols).unwrap(),
                "f16 {rows}x{cols}"
            );
        }
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gemm_takes_the_dense_route_at_large_batches() {
    dense_route::<TernaryMatrix>();
    dense_route::<Int2Matrix>();
}

/// `Gpu::gemm` and `gemm_w2a8` at batches the planner routes to cuBLAS over decoded weights
/// (checked through `Gpu::route`), against the float64 reference and the exact int32 sums,
/// with and without bias and for every scale kind; twice, so the second call reads the
/// cached dense weights.
fn dense_route<W: RandomWeights>() {
    let (mut gpu, s, mut rng) = setup();
    // Without the prefill kernel (which keeps every batch on sm_90a), these batches are
    // past the thresholds on every GPU.
    gpu.set_prefill(false);
    for (i, (rows, cols, batch)) in [(512, 1024, 1024), (136, 264, 600), (1000, 2056, 1100)]
        .into_iter()
        .enumerate()
    {
        let w = W::random(&mut rng, rows, cols, i);
        let d = gpu.upload(&w, &s).unwrap();
        for x in [DType::F16, DType::BF16, DType::I8] {
            let r = gpu.route(rows, cols, W::LEVELS, x, batch).unwrap();
            assert_eq!(r, Route::Dense, "{rows}x{cols} batch {batch} {x:?}");
        }
        for round in 0..2 {
            let xf: Vec<f32> = (0..batch * cols)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            let bias: Vec<f32> = (0..rows).map(|_| rng.random_range(-1.0..1.0)).collect();
            let with_bias = round == 1;
            let bias64: Vec<f64> = bias.iter().map(|&b| f64::from(f16::from_f32(b))).collect();
            let want = |x: Vec<f64>| reference_f64(&w, &x, batch, with_bias.then_some(&bias64[..]));
            let x16: Vec<f16> = xf.iter().map(|&v| f16::from_f32(v)).collect();
            let b16: Vec<f16> = bias.iter().map(|&v| f16::from_f32(v)).collect();
            let (xd, bd) = (s.clone_htod(&x16).unwrap(), s.clone_htod(&b16).unwrap());
            let mut y = s.alloc_zeros::<f16>(batch * rows).unwrap();
            poison(&s, &mut y);
            let b = with_bias.then_some(&bd as &dyn DevicePtr<f16>);
            gpu.gemm(&d, &xd, batch, b, &mut y, &s).unwrap();
            let e = rel_err(&device_f64(&s, &y), &want(host_f64(&x16)));
            assert!(
                e <= 1e-3,
                "dense f16 {rows}x{cols} batch {batch} bias {with_bias}: {e:.2e}"
            );
            let q: Vec<i8> = (0..batch * cols).map(|_| rng.random()).collect();
            let xs: Vec<f32> = (0..batch).map(|_| rng.random_range(0.001..0.02)).collect();
            let (qd, xsd) = (s.clone_htod(&q).unwrap(), s.clone_htod(&xs).unwrap());
            let mut acc = s.alloc_zeros::<i32>(batch * rows).unwrap();
            poison(&s, &mut acc);
            gpu.gemm_w2a8::<i32>(&d, &qd, &xsd, batch, None, &mut acc, &s)
                .unwrap();
            let exact = cpu::reference::gemm_i8_accumulate(&w, &q, batch).unwrap();
            assert_eq!(
                s.clone_dtoh(&acc).unwrap(),
                exact,
                "dense i8 {rows}x{cols} batch {batch}"
            );
            // The W2A8 epilogue over those sums: the CPU reference's bytes.
            let mut y8 = s.alloc_zeros::<f16>(batch * rows).unwrap();
            poison(&s, &mut y8);
            gpu.gemm_w2a8(&d, &qd, &xsd, batch, b, &mut y8, &s).unwrap();
            let mut cpu_y = vec![f16::ZERO; batch * rows];
            let cpu_bias = with_bias.then_some(&b16[..]);
            cpu::reference::gemm_w2a8(&w, &q, &xs, batch, cpu_bias, &mut cpu_y).unwrap();
            assert_eq!(
                s.clone_dtoh(&y8).unwrap(),
                cpu_y,
                "dense w2a8 epilogue {rows}x{cols}"
            );
        }
    }
}
