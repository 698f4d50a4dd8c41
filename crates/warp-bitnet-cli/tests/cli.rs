//! The `warp-bitnet` binary as a user runs it: exit codes and the words of its messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::tensor::{Dtype, TensorView};

/// A fresh folder for one test (removed when dropped).
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("warp-bitnet-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warp-bitnet"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A failed run: non-zero exit, one `error:` line in plain words (no panic, no Debug
/// formatting such as `Some(..)` or anyhow's "Caused by" report). Returns stderr.
fn failed(out: &Output) -> String {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "exit 0; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !err.contains("Some(") && !err.contains("Caused by"),
        "{err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines[0].starts_with("error:"), "{err}");
    err
}

/// Random-looking values (no zeros) as little-endian f32 bytes.
fn f32_bytes(n: usize, seed: u32) -> Vec<u8> {
    (0..n)
        .flat_map(|i| {
            let v = ((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 1000;
            let v = v as f32 / 250.0 - 1.999;
            v.to_le_bytes()
        })
        .collect()
}

fn write_st(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (*n, TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

#[test]
fn zero_iterations_or_batch_are_refused_when_parsed() {
    let dir = Scratch::new("iters");
    for args in [
        &["bench", "--iters", "0"][..],
        &["bench", "--batch", "1,0"],
        &["bench", "--iters", "x"],
    ] {
        let out = run(args, &dir.0);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(args[1]), "names the argument: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn a_shape_filter_that_matches_nothing_says_so() {
    let dir = Scratch::new("only");
    let err = failed(&run(&["bench", "--only", "nomatch"], &dir.0));
    assert!(err.contains("--only nomatch"), "{err}");
    assert!(err.contains("bitnet-2b k/v"), "lists the shapes: {err}");
}

#[test]
fn json_output_is_checked_before_the_run() {
    let dir = Scratch::new("json");
    for (target, why) in [
        (dir.0.to_str().unwrap(), "is a directory"),
        ("no/such/dir/out.json", "does not exist"),
    ] {
        let out = run(&["bench", "--device", "cpu", "--json", target], &dir.0);
        let err = failed(&out);
        assert!(
            err.contains("--json") && err.contains(target) && err.contains(why),
            "{err}"
        );
        assert!(
            text(&out.stdout).is_empty(),
            "no bench row before the check"
        );
    }
}

#[test]
fn cpu_bench_explains_what_it_compares() {
    let dir = Scratch::new("cpubench");
    let json = dir.path("rows.json");
    let out = run(
        &[
            "bench",
            "--device",
            "cpu",
            "--only",
            "bitnet-2b k/v",
            "--iters",
            "1",
            "--json",
            json.to_str().unwrap(),
        ],
        &dir.0,
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].contains("against dense GEMVs") && lines[0].contains("speedup ="),
        "{stdout}"
    );
    assert!(lines[0].contains("correctness oracle"), "{stdout}");
    // The run line: the same run's DRAM copy bandwidth, which %copy divides by.
    assert!(lines[1].contains("copy bandwidth"), "{stdout}");
    let header = lines[2];
    assert!(
        header.contains("GB/s") && header.contains("max err") && header.contains("%copy"),
        "{header}"
    );
    assert!(
        !header.contains("b2b"),
        "no back-to-back timing on the CPU: {header}"
    );
    assert!(
        stdout.contains("\nmax err: largest |ours - float64 reference|"),
        "legend: {stdout}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("bitnet-2b k/v")),
        "{stdout}"
    );
    let rows: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(!rows["rows"].as_array().unwrap().is_empty());
}

#[test]
fn pack_says_what_it_packed_and_what_it_kept_and_why() {
    let dir = Scratch::new("pack");
    let input = dir.path("dense.safetensors");
    let f64s: Vec<u8> = (0..12)
        .flat_map(|i| (f64::from(i) - 5.5).to_le_bytes())
        .collect();
    let i32s: Vec<u8> = (0..12).flat_map(|i: i32| (i - 5).to_le_bytes()).collect();
    write_st(
        &input,
        &[
            ("layer.weight", Dtype::F32, vec![5, 20], f32_bytes(100, 1)),
            ("norm.weight", Dtype::F32, vec![20], f32_bytes(20, 2)),
            ("conv.weight", Dtype::F32, vec![2, 3, 4], f32_bytes(24, 3)),
            ("wide.weight", Dtype::F64, vec![3, 4], f64s),
            ("ids", Dtype::I32, vec![3, 4], i32s),
            (
                "embed_tokens.weight",
                Dtype::F32,
                vec![3, 4],
                f32_bytes(12, 4),
            ),
        ],
    );
    let out = run(&["pack", "dense.safetensors", "packed.safetensors"], &dir.0);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for (name, why) in [
        ("norm.weight", "1-D"),
        ("conv.weight", "3-D"),
        ("wide.weight", "dtype F64"),
        ("ids", "dtype I32"),
        ("embed_tokens.weight", "`embed` (--skip)"),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&format!("`{name}`")))
            .unwrap_or_default();
        assert!(
            line.contains("kept") && line.contains(why),
            "{name}: {stdout}"
        );
    }
    assert!(
        stdout.contains("1 tensor(s) packed, 5 kept as is"),
        "{stdout}"
    );
    assert!(dir.path("packed.safetensors").is_file());
}

#[test]
fn pack_with_nothing_to_pack_fails_unless_allowed() {
    let dir = Scratch::new("packempty");
    write_st(
        &dir.path("norms.st"),
        &[("norm.weight", Dtype::F32, vec![20], f32_bytes(20, 5))],
    );
    let out = run(&["pack", "norms.st", "out.st"], &dir.0);
    let err = failed(&out);
    assert!(
        err.contains("norms.st") && err.contains("--allow-empty"),
        "{err}"
    );
    assert!(text(&out.stdout).contains("kept `norm.weight` as is: 1-D"));
    assert!(!dir.path("out.st").exists(), "nothing written");
    let out = run(&["pack", "norms.st", "out.st", "--allow-empty"], &dir.0);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.path("out.st").is_file());
}

#[test]
fn output_paths_are_checked_and_named() {
    let dir = Scratch::new("outputs");
    write_st(
        &dir.path("d.st"),
        &[("w", Dtype::F32, vec![2, 16], f32_bytes(32, 6))],
    );
    std::fs::create_dir(dir.path("folder")).unwrap();
    for cmd in ["pack", "unpack", "convert"] {
        let err = failed(&run(&[cmd, "d.st", "folder"], &dir.0));
        assert!(err.contains("output folder is a directory"), "{cmd}: {err}");
        let err = failed(&run(&[cmd, "d.st", "missing/o.st"], &dir.0));
        assert!(
            err.contains("the folder missing does not exist"),
            "{cmd}: {err}"
        );
    }
}

#[test]
fn a_missing_input_is_named_once() {
    let dir = Scratch::new("missing");
    for cmd in ["pack", "unpack", "convert"] {
        let err = failed(&run(&[cmd, "nope.st", "out.st"], &dir.0));
        assert_eq!(err.matches("nope.st").count(), 1, "{cmd}: {err}");
        assert!(err.contains("cannot read input nope.st"), "{cmd}: {err}");
    }
}

#[test]
fn a_corrupt_convert_input_is_called_corrupt() {
    let dir = Scratch::new("corrupt");
    std::fs::write(
        dir.path("bad.st"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all",
    )
    .unwrap();
    let err = failed(&run(&["convert", "bad.st", "out.st"], &dir.0));
    assert!(!err.contains("config.json"), "{err}");
    assert!(
        err.contains("bad file") && err.matches("bad.st").count() == 1,
        "{err}"
    );
}

#[test]
fn convert_with_nothing_to_convert_fails_unless_allowed() {
    let dir = Scratch::new("convertempty");
    write_st(
        &dir.path("model.safetensors"),
        &[("norm.weight", Dtype::F32, vec![8], f32_bytes(8, 7))],
    );
    std::fs::write(
        dir.path("config.json"),
        r#"{"quantization_config": {"linear_class": "autobitlinear"}}"#,
    )
    .unwrap();
    let out = run(&["convert", "model.safetensors", "packed.st"], &dir.0);
    let err = failed(&out);
    assert!(
        err.contains("nothing to convert in model.safetensors"),
        "{err}"
    );
    assert!(text(&out.stdout).contains("kept `norm.weight` as is"));
    let out = run(
        &["convert", "model.safetensors", "packed.st", "--allow-empty"],
        &dir.0,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("0 tensor(s) converted, 1 kept as is"));
}

#[test]
fn cuda_bench_without_a_gpu_says_what_to_do() {
    let dir = Scratch::new("nocuda");
    let info = text(&run(&["info"], &dir.0).stdout);
    if !info.contains("cuda: no driver or no device") && !info.contains("cuda: not compiled in") {
        eprintln!("skipped: this machine has a CUDA device");
        return;
    }
    let err = failed(&run(
        &[
            "bench",
            "--device",
            "cuda",
            "--only",
            "bitnet-2b k/v",
            "--iters",
            "1",
        ],
        &dir.0,
    ));
    assert!(
        err.contains("CUDA") && err.contains("--device cpu"),
        "{err}"
    );
}

#[test]
fn bench_model_names_a_missing_path_or_unknown_preset() {
    let dir = Scratch::new("benchmodel");
    let err = failed(&run(
        &["bench", "--model", "no-such-model.gguf", "--device", "cpu"],
        &dir.0,
    ));
    assert!(
        err.contains("--model no-such-model.gguf: neither a preset nor an existing model file"),
        "{err}"
    );
    assert!(err.contains("bitnet-2b4t"), "{err}");
}
