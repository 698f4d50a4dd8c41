//! `warp-bitnet`: benchmark, pack, convert and inspect ternary weights.

mod bench;
mod bench_model;
mod convert;
mod pack;
mod paths;
mod run;
mod serve;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "warp-bitnet",
    version,
    about = "Ternary (BitNet b1.58) linear algebra"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show build features, CPU features and the CUDA devices found.
    Info,
    /// Benchmark our kernels against dense baselines on real model shapes.
    Bench(bench::Args),
    /// Quantize the 2-D float tensors of a safetensors file to packed ternary or INT2 (+ scales).
    Pack(pack::PackArgs),
    /// Expand a packed file back to dense tensors (W * scale).
    Unpack(pack::UnpackArgs),
    /// Convert a Hugging Face BitNet checkpoint (pre-packed U8 weights) or a bitnet.cpp GGUF file
    /// (I2_S tensors) to a packed file.
    Convert(convert::ConvertArgs),
    /// Generate text or token ids from a BitNet model (the native engine, on the CPU or a GPU).
    Run(run::Args),
    /// Serve a model over an OpenAI-compatible HTTP API with continuous batching.
    Serve(serve::Args),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Info => info(),
        Command::Bench(a) => bench::run(a),
        Command::Pack(a) => pack::pack(a),
        Command::Unpack(a) => pack::unpack(a),
        Command::Convert(a) => convert::convert(a),
        Command::Run(a) => run::run(a),
        Command::Serve(a) => serve::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, the causes joined by ": " (anyhow's `{:#}`), not the Debug report.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn info() -> Result<()> {
    println!(
        "warp-bitnet {} ({})",
        env!("CARGO_PKG_VERSION"),
        env!("WARP_BITNET_COMMIT")
    );
    println!("features: cuda={}", cfg!(feature = "cuda"));
    println!(
        "cpu: {} threads, {}",
        rayon::current_num_threads(),
        cpu_features().join(" ")
    );
    cuda_info();
    Ok(())
}

fn cpu_features() -> Vec<&'static str> {
    let mut f = vec![std::env::consts::ARCH];
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            f.push("avx2");
        }
        if is_x86_feature_detected!("fma") {
            f.push("fma");
        }
        if is_x86_feature_detected!("avx512f") {
            f.push("avx512f");
        }
        if is_x86_feature_detected!("avx512bw") {
            f.push("avx512bw");
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        f.push("neon");
    }
    f
}

#[cfg(feature = "cuda")]
fn cuda_info() {
    use warp_bitnet::cuda::{compile, is_available, Gpu};
    match compile::nvrtc_version() {
        Ok((a, b)) => println!("nvrtc: {a}.{b}"),
        Err(_) => println!("nvrtc: not found"),
    }
    if !is_available() {
        println!("cuda: no driver or no device");
        return;
    }
    match Gpu::new(0) {
        Ok(g) => {
            let i = g.info();
            println!(
                "cuda: {} (sm {}.{}, {}), {} SMs, {} MiB L2, {} GiB, driver {}.{}",
                i.name,
                i.compute_capability.0,
                i.compute_capability.1,
                i.arch,
                i.sm_count,
                i.l2_bytes >> 20,
                i.total_mem >> 30,
                i.driver_version.0,
                i.driver_version.1
            );
        }
        Err(e) => println!("cuda: device 0 unusable: {e}"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_info() {
    println!("cuda: not compiled in");
}
