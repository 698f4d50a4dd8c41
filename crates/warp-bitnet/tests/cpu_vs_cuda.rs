//! Cross-backend conformance on a GPU host: the fast CPU kernels (every instruction set this
//! CPU has) against the CUDA kernels on the same random weights and activations, over random
//! shapes (columns not a multiple of 16, 1-64 tokens), ternary and INT2, f16/bf16 and int8
//! activations. Integer W2A8 accumulators must match exactly; float outputs within
//! `||cpu - gpu|| / ||gpu||` <= 2e-3 (f16) / 2e-2 (bf16): each backend is within half of that
//! of the float64 reference (tests/cuda.rs, tests/cpu_kernels.rs), the rest is the output
//! rounding of both.
//!
//! `cargo test --release -p warp-bitnet --test cpu_vs_cuda -- --include-ignored`
#![cfg(feature = "cuda")]

use cudarc::driver::DeviceRepr;
use half::{bf16, f16};
use rand::{rngs::StdRng, Rng, SeedableRng};
use warp_bitnet::bench::{random_int2_matrix, random_matrix};
use warp_bitnet::cpu::{CpuMatrix, Isa, Kernels};
use warp_bitnet::cuda::{Gpu, GpuFloat};
use warp_bitnet::{Activation, PackedWeights};

const SHAPES: usize = 300;

fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert!(
        a.iter().chain(b).all(|v| v.is_finite()),
        "non-finite output"
    );
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(f64::MIN_POSITIVE)).sqrt()
}

fn f64s<T: Activation>(v: &[T]) -> Vec<f64> {
    v.iter().map(|x| f64::from(x.to_f32())).collect()
}

/// One shape: both backends, every ISA, W2A8 accumulators and `T` activations.
fn compare<W: PackedWeights, T: Activation + GpuFloat + DeviceRepr>(
    gpu: &Gpu,
    w: &W,
    batch: usize,
    rng: &mut StdRng,
    tol: f64,
) {
    let (rows, cols) = (w.rows(), w.cols());
    let s = gpu.context().default_stream();
    let d = gpu.upload(w, &s).unwrap();
    let c = CpuMatrix::from(w);
    let q: Vec<i8> = (0..batch * cols).map(|_| rng.random()).collect();
    let xs: Vec<f32> = (0..batch).map(|_| rng.random_range(0.001..0.1)).collect();
    let x: Vec<T> = (0..batch * cols)
        .map(|_| T::from_f32(rng.random_range(-2.0..2.0)))
        .collect();
    let (qd, xsd, xd) = (
        s.clone_htod(&q).unwrap(),
        s.clone_htod(&xs).unwrap(),
        s.clone_htod(&x).unwrap(),
    );
    let mut acc_d = s.clone_htod(&vec![i32::MIN; batch * rows]).unwrap();
    gpu.gemm_w2a8::<i32>(&d, &qd, &xsd, batch, None, &mut acc_d, &s)
        .unwrap();
    let acc_gpu = s.clone_dtoh(&acc_d).unwrap();
    let mut y_d = s
        .clone_htod(&vec![T::from_f32(f32::NAN); batch * rows])
        .unwrap();
    gpu.gemm(&d, &xd, batch, None, &mut y_d, &s).unwrap();
    let y_gpu = f64s(&s.clone_dtoh(&y_d).unwrap());
    for isa in Isa::available() {
        let k = Kernels::new(isa).unwrap();
        let mut acc = vec![i32::MIN; batch * rows];
        k.accumulate_i8(&c, &q, batch, &mut acc, 2).unwrap();
        assert_eq!(
            acc, acc_gpu,
            "{isa:?} {rows}x{cols} batch {batch}: W2A8 sums"
        );
        let mut y = vec![T::from_f32(f32::NAN); batch * rows];
        k.gemm(&c, &x, batch, None, &mut y, 2).unwrap();
        let e = rel_diff(&f64s(&y), &y_gpu);
        assert!(
            e <= tol,
            "{isa:?} {rows}x{cols} batch {batch} {:?}: CPU vs GPU {e:.2e}",
            <T as Activation>::DTYPE
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cpu_kernels_match_the_cuda_kernels() {
    let gpu = Gpu::new(0).expect("a CUDA GPU");
    let seed: u64 = rand::random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    for i in 0..SHAPES {
        let rows = rng.random_range(1..=300);
        let cols = rng.random_range(1..=3000);
        let batch = if i % 4 == 0 {
            rng.random_range(5..=64)
        } else {
            rng.random_range(1..=4)
        };
        if i % 2 == 0 {
            let w = random_matrix(&mut rng, rows, cols);
            compare::<_, f16>(&gpu, &w, batch, &mut rng, 2e-3);
            compare::<_, bf16>(&gpu, &w, batch, &mut rng, 2e-2);
        } else {
            let w = random_int2_matrix(&mut rng, rows, cols);
            compare::<_, f16>(&gpu, &w, batch, &mut rng, 2e-3);
            compare::<_, bf16>(&gpu, &w, batch, &mut rng, 2e-2);
        }
    }
}
