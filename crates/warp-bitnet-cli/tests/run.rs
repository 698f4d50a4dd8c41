//! `warp-bitnet run` end to end on a tiny checkpoint: JSON output, streaming text, and every bad
//! input a clear error with a non-zero exit.

#[path = "../../warp-bitnet/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warp-bitnet"))
        .arg("run")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

/// A word-level tokenizer: `<unk>`, `<s>`, `</s>`, then `w3` .. `w36`.
fn write_tokenizer(dir: &Path) {
    let mut vocab = serde_json::Map::new();
    for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), i.into());
    }
    for i in 3..common::VOCAB {
        vocab.insert(format!("w{i}"), i.into());
    }
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null, "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    let cfg = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>",
        "chat_template": "{% for m in messages %}{{ m.content }} {% endfor %}{% if add_generation_prompt %}w9{% endif %}"});
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
}

fn model() -> std::path::PathBuf {
    let dir = common::temp_dir("cli-run");
    common::write_checkpoint(&dir, 2, 3);
    write_tokenizer(&dir);
    dir
}

#[test]
fn json_output_has_ids_and_timings() {
    let dir = model();
    let out = run(&[
        dir.to_str().unwrap(),
        "--prompt-ids",
        "5,6,7",
        "--max-tokens",
        "6",
        "--ignore-eos",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prompt_ids"], serde_json::json!([5, 6, 7]));
    assert_eq!(v["generated_ids"].as_array().unwrap().len(), 6);
    assert!(
        v["prefill_ms"].as_f64().unwrap() > 0.0 && v["decode_tokens_per_s"].as_f64().unwrap() > 0.0
    );
    // Greedy is deterministic; the text is the decoded ids.
    let again = run(&[
        dir.to_str().unwrap(),
        "--prompt",
        "w5 w6 w7",
        "--max-tokens",
        "6",
        "--ignore-eos",
        "--json",
    ]);
    let w: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(w["prompt_ids"], serde_json::json!([5, 6, 7]));
    assert_eq!(w["generated_ids"], v["generated_ids"]);
    let words: Vec<String> = v["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| format!("w{i}"))
        .collect();
    assert_eq!(w["text"], serde_json::json!(words.join(" ")));
}

#[test]
fn streams_text() {
    let dir = model();
    let out = run(&[
        dir.to_str().unwrap(),
        "--prompt",
        "w5 w6",
        "--max-tokens",
        "4",
        "--ignore-eos",
        "--chat",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim().split(' ').count(), 4, "{text:?}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = model();
    let d = dir.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&[d, "--prompt-ids", "5", "--max-tokens", "0"], "max-tokens"),
        (
            &[d, "--prompt-ids", "5,6,7,8,9", "--max-context", "4"],
            "context",
        ),
        (&[d, "--prompt-ids", "5,999"], "999"),
        (&[d, "--prompt-ids", "5", "--device", "cuda"], "CUDA"),
        (&[d, "--prompt", ""], "empty"),
        (&[d, "--prompt-ids", "5", "--temperature=-1"], "temperature"),
        (&[d], "prompt"),
        (&["/no/such/model", "--prompt-ids", "5"], "/no/such/model"),
    ];
    for (args, needle) in cases {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
    // A broken config.json, then none, then an unsupported architecture.
    let config = dir.join("config.json");
    for (text, needle) in [
        (Some("{oops"), "config.json"),
        (None, "config.json"),
        (
            Some(r#"{"architectures": ["MambaForCausalLM"]}"#),
            "MambaForCausalLM",
        ),
    ] {
        match text {
            Some(t) => std::fs::write(&config, t).unwrap(),
            None => std::fs::remove_file(&config).unwrap(),
        }
        let out = run(&[d, "--prompt-ids", "5"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(needle), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
