//! `warp-bitnet bench`: one table, one JSON schema for every backend.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, ValueEnum};
use rand::{rngs::StdRng, SeedableRng};
use serde::Serialize;
use warp_bitnet::bench::{cpu, BenchRow, Shape, SHAPES};

use crate::paths;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Device {
    /// CUDA when a driver and device are present, else CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(ClapArgs)]
pub struct Args {
    /// Where to run.
    #[arg(long, value_enum, default_value = "auto")]
    device: Device,
    /// Batch sizes (tokens per call), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1", value_parser = at_least_one)]
    batch: Vec<usize>,
    /// Only shapes whose name contains this text.
    #[arg(long)]
    only: Option<String>,
    /// CPU threads per call, comma-separated (each count is a separate pass; default:
    /// `WARP_BITNET_THREADS`, else every CPU).
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Timed iterations per measurement (default: 200 on CUDA, 20 on CPU).
    #[arg(long, value_parser = at_least_one)]
    iters: Option<usize>,
    /// Also write the rows, with GPU, driver, date and commit, to this JSON file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// When to take the split-K cluster kernels (sm_90+, 9+ tokens): `never` times the
    /// token-group kernels that sm_80 GPUs run, `always` the split kernels wherever they fit.
    #[arg(long, value_enum, default_value = "auto")]
    split_kernels: Split,
    /// Split and prefill kernels with mma.sync where the GPU has wgmma (sm_90a), for A/B
    /// runs.
    #[arg(long)]
    no_wgmma: bool,
    /// Batches beyond 64 tokens without the prefill kernels: the split or token-group
    /// kernels, for A/B runs.
    #[arg(long)]
    no_prefill: bool,
    /// Whole-model benchmark (`--model NAME`; crates/warp-bitnet-cli/src/bench_model.rs).
    #[command(flatten)]
    model: crate::bench_model::ModelArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Split {
    Never,
    Auto,
    Always,
}

#[derive(Serialize)]
struct Report<'a, R: Serialize> {
    date: String,
    commit: &'static str,
    run: R,
    rows: &'a [BenchRow],
}

/// Parses a count that must be at least 1 (`--iters`, `--batch`), at parse time.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{s}` is not a whole number: {e}")),
    }
}

pub fn run(a: Args) -> Result<()> {
    if let Some(name) = &a.model.model {
        let json = a.json.as_deref();
        if a.device == Device::Cuda || (a.device == Device::Auto && cuda_present()) {
            return crate::bench_model::run_cuda(&a.model, name, json, a.seed, &a.batch);
        }
        return crate::bench_model::run(&a.model, name, &a.threads, json, a.seed);
    }
    let shapes: Vec<Shape> = SHAPES
        .iter()
        .copied()
        .filter(|s| a.only.as_deref().is_none_or(|o| s.name.contains(o)))
        .collect();
    if shapes.is_empty() {
        let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
        bail!(
            "--only {}: no benchmark shape name contains it; the shapes are: {}",
            a.only.as_deref().unwrap_or_default(),
            names.join(", ")
        );
    }
    if let Some(path) = &a.json {
        paths::check_output(path, "--json")?;
    }
    let mut rng = StdRng::seed_from_u64(a.seed);
    let cuda = match a.device {
        Device::Cpu => false,
        Device::Cuda => true,
        Device::Auto => cuda_present(),
    };
    if cuda {
        return run_cuda(&a, &shapes, &mut rng);
    }
    run_cpu(&a, &shapes, &mut rng)
}

fn run_cpu(a: &Args, shapes: &[Shape], rng: &mut StdRng) -> Result<()> {
    let threads = if a.threads.is_empty() {
        vec![0]
    } else {
        a.threads.clone()
    };
    println!(
        "CPU bench: ours (the fast CPU kernels named in the last column) on packed ternary / int2 \
         weights against dense GEMVs of the same weights that we wrote (f32 weights, and f16 \
         weights converted in registers; no BLAS), weights rotated from DRAM; speedup = baseline \
         time / our time. cpu::reference is the correctness oracle."
    );
    let cols = Columns::CPU;
    let mut rows = Vec::new();
    let mut infos = Vec::new();
    for &t in &threads {
        let bench = cpu::CpuBench::new(t, a.iters.unwrap_or(20))?;
        let i = &bench.info;
        println!(
            "CPU: {} [{}], {} threads, kernels {}, copy bandwidth {:.1} GB/s, pool overhead {:.1} us \
             (min {:.1}), load average {:.1}; median of {}",
            i.cpu, i.flags.join(" "), i.threads, i.isa, i.copy_gbps, i.pool_overhead_us,
            i.pool_overhead_min_us, i.load_average, i.iters
        );
        header(cols);
        for &batch in &a.batch {
            for s in shapes {
                for r in bench.run_shape(*s, batch, rng)? {
                    print_row(&r, cols);
                    rows.push(r);
                }
                write_json(a, &infos, &rows, false)?;
            }
        }
        infos.push(bench.info);
    }
    legend(cols);
    write_json(a, &infos, &rows, true)
}

/// Which of the optional columns a run measured.
#[derive(Clone, Copy)]
struct Columns {
    /// `%copy`: the run measured the copy bandwidth (CUDA: device copies; CPU: DRAM).
    copy: bool,
    /// Back-to-back timings (CUDA).
    b2b: bool,
}

impl Columns {
    const CPU: Self = Self {
        copy: true,
        b2b: false,
    };
    const CUDA: Self = Self {
        copy: true,
        b2b: true,
    };
}

fn header(c: Columns) {
    print!(
        "{:<22} {:>12} {:>5} {:>5} {:>7} {:>10} {:>12} {:>10} {:>8} {:>8}",
        "shape", "MxN", "batch", "fmt", "act", "ours us", "baseline", "base us", "speedup", "GB/s",
    );
    if c.copy {
        print!(" {:>7}", "%copy");
    }
    if c.b2b {
        print!(
            " {:>8} {:>8} {:>8} {:>7}",
            "b2b us", "b2b base", "b2b x", "%copy"
        );
    }
    println!(" {:>9}  kernel", "max err");
}

fn print_row(r: &BenchRow, c: Columns) {
    print!(
        "{:<22} {:>12} {:>5} {:>5} {:>7} {:>10.2} {:>12} {:>10.2} {:>7.2}x {:>8.1}",
        r.shape,
        format!("{}x{}", r.rows, r.cols),
        r.batch,
        r.format,
        r.activation,
        r.time_us,
        r.baseline,
        r.baseline_us,
        r.speedup,
        r.gbps,
    );
    if c.copy {
        print!(" {:>7.1}", r.pct_copy_bw);
    }
    if c.b2b {
        print!(
            " {:>8.2} {:>8.2} {:>7.2}x {:>7.1}",
            r.stream_us, r.baseline_stream_us, r.stream_speedup, r.stream_pct_copy_bw
        );
    }
    println!(" {:>9.2e}  {}", r.max_rel_err, r.kernel);
}

/// What the columns mean, printed under the table.
fn legend(c: Columns) {
    println!(
        "max err: largest |ours - float64 reference| over the outputs, divided by the largest \
         |reference|. GB/s: the bytes our kernel must move (weights, activations, outputs) over \
         its time."
    );
    if c.copy {
        println!("%copy: GB/s as a percentage of the copy bandwidth measured in the same run.");
    }
    if c.b2b {
        println!(
            "b2b: per call when 20 calls run back to back (as a decode loop or a CUDA graph \
             runs them)."
        );
    }
}

/// Writes the rows so far to `--json`, if given; `last` says so on the console.
fn write_json(a: &Args, run: impl Serialize, rows: &[BenchRow], last: bool) -> Result<()> {
    if let Some(path) = &a.json {
        let report = Report {
            date: today_utc(),
            commit: env!("WARP_BITNET_COMMIT"),
            run,
            rows,
        };
        let text = serde_json::to_string_pretty(&report)? + "\n";
        paths::write_output(path, "--json", text.as_bytes())?;
        if last {
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

#[cfg(feature = "cuda")]
fn cuda_present() -> bool {
    warp_bitnet::cuda::is_available()
}

#[cfg(not(feature = "cuda"))]
fn cuda_present() -> bool {
    false
}

#[cfg(feature = "cuda")]
fn run_cuda(a: &Args, shapes: &[Shape], rng: &mut StdRng) -> Result<()> {
    use warp_bitnet::cuda::SplitKernels;
    let split = match a.split_kernels {
        Split::Never => SplitKernels::Never,
        Split::Auto => SplitKernels::Auto,
        Split::Always => SplitKernels::Always,
    };
    let bench = warp_bitnet::bench::cuda::CudaBench::new(
        a.iters.unwrap_or(200),
        split,
        !a.no_wgmma,
        !a.no_prefill,
    )
    .context("cannot start the CUDA bench (--device cpu runs the CPU one)")?;
    let i = &bench.info;
    println!(
        "CUDA: {} (sm {}, {} SMs, {} MiB L2, driver {}), copy bandwidth {:.0} GB/s; L2-cold, median of {}",
        i.gpu, i.compute_capability, i.sm_count, i.l2_bytes >> 20, i.driver, i.copy_gbps, i.iters
    );
    let cols = Columns::CUDA;
    header(cols);
    let mut rows = Vec::new();
    for &batch in &a.batch {
        for s in shapes {
            for r in bench.run_shape(*s, batch, rng)? {
                print_row(&r, cols);
                rows.push(r);
            }
            // After every shape: a long run cut short keeps what it measured.
            write_json(a, &bench.info, &rows, false)?;
        }
    }
    legend(cols);
    write_json(a, &bench.info, &rows, true)
}

#[cfg(not(feature = "cuda"))]
fn run_cuda(_: &Args, _: &[Shape], _: &mut StdRng) -> Result<()> {
    bail!("--device cuda: this build has no CUDA support (feature `cuda`)")
}

/// Today's UTC date as YYYY-MM-DD (days-from-civil inverse, H. Hinnant).
pub(crate) fn today_utc() -> String {
    let days = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn date_format() {
        let d = super::today_utc();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
