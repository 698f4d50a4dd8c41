//! The tokenizer stored in a GGUF file's metadata (`tokenizer.ggml.*`, llama.cpp's
//! `llama-vocab.cpp` conventions), rebuilt as the `tokenizer.json` transformers would hold for it
//! and loaded by the `tokenizers` crate:
//!
//! - `tokenizer.ggml.model = "gpt2"`: byte-level BPE from `tokens` and `merges`; the split regex
//!   by `tokenizer.ggml.pre`: GPT-2's (`default`, `gpt-2`, `gpt2`) or Llama 3's (`llama-bpe`,
//!   `llama3`, `llama-v3`, which llama.cpp runs with `ignore_merges`, as transformers does).
//!   Other `pre` values are refused by name rather than guessed. Without the key: Llama 3's for
//!   a vocabulary with `<|begin_of_text|>` (bitnet.cpp writes none for
//!   `microsoft/bitnet-b1.58-2B-4T`, whose tokenizer is Llama 3's), else GPT-2's.
//! - `tokenizer.ggml.model = "llama"`: SentencePiece BPE with byte fallback (`<0xNN>` tokens),
//!   merges derived from `scores` as transformers' `SentencePieceExtractor` does (every split of
//!   a token into two tokens, in order of the merged token's score), `▁` for spaces and one
//!   prepended (`tokenizer.ggml.add_space_prefix`, default true).
//! - `no_vocab` / `none` / no key: no tokenizer (prompts as token ids).
//!
//! Token types (`token_type`): 3 (control) become special added tokens, 4 (user-defined) plain
//! added tokens; BOS / EOS are added when `add_bos_token` / `add_eos_token` say so (default:
//! BOS for `llama`, nothing for `gpt2`). The chat template is `tokenizer.chat_template`.

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use super::config::ModelConfig;
use super::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::gguf::Gguf;

const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const UNKNOWN: i64 = 2;

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn bad(file: &str, key: &str, why: impl std::fmt::Display) -> Error {
    Error::BadFile(format!("{file}: metadata `{key}`: {why}"))
}

/// The tokenizer of a GGUF model, or `None` if the file has none.
pub(crate) fn from_gguf(g: &Gguf, c: &ModelConfig, file: &str) -> Result<Option<Tokenizer>> {
    let in_file = |e: Error| match e {
        Error::BadFile(m) => Error::BadFile(format!("{file}: {m}")),
        other => other,
    };
    let model = g.string("tokenizer.ggml.model").map_err(in_file)?;
    let model = match model.as_deref() {
        None | Some("none") | Some("no_vocab") => return Ok(None),
        Some(m @ ("gpt2" | "llama")) => m.to_string(),
        Some(other) => {
            return Err(Error::Unsupported {
                what: "tokenizer",
                detail: format!(
                    "{other:?} (`tokenizer.ggml.model` in {file}); supported: \"gpt2\" (byte-level BPE), \"llama\" (SentencePiece BPE)"
                ),
            })
        }
    };
    let key = "tokenizer.ggml.tokens";
    let tokens = g
        .strings(key)
        .map_err(in_file)?
        .ok_or_else(|| Error::BadFile(format!("{file}: metadata key `{key}` is missing")))?;
    if tokens.is_empty() || tokens.len() > c.vocab_size {
        return Err(bad(
            file,
            key,
            format!(
                "{} tokens for a model of vocab_size {}",
                tokens.len(),
                c.vocab_size
            ),
        ));
    }
    let n = tokens.len();
    let types = match g.ints("tokenizer.ggml.token_type").map_err(in_file)? {
        Some(t) if t.len() != n => {
            return Err(bad(
                file,
                "tokenizer.ggml.token_type",
                format!("{} entries for {n} tokens", t.len()),
            ))
        }
        Some(t) => t,
        None => vec![1; n],
    };
    let id = |k: &str| -> Result<Option<u32>> {
        match g.uint(k).map_err(in_file)? {
            Some(v) if (v as usize) < n => Ok(Some(v as u32)),
            Some(v) => Err(bad(file, k, format!("{v} is not one of the {n} tokens"))),
            None => Ok(None),
        }
    };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    id("tokenizer.ggml.eot_token_id")?;
    let flag = |k: &str, default: bool| -> Result<bool> {
        Ok(g.boolean(k).map_err(in_file)?.unwrap_or(default))
    };
    let add_bos = flag("tokenizer.ggml.add_bos_token", model == "llama")?;
    let add_eos = flag("tokenizer.ggml.add_eos_token", false)?;

    let mut vocab = Map::new();
    for (i, t) in tokens.iter().enumerate() {
        // The first of duplicate spellings keeps the text (as llama.cpp's token_to_id does).
        vocab.entry(t.clone()).or_insert(json!(i));
    }
    let added: Vec<Value> = tokens
        .iter()
        .zip(&types)
        .enumerate()
        .filter(|(_, (_, &ty))| {
            ty == CONTROL || ty == USER_DEFINED || (model == "llama" && ty == UNKNOWN)
        })
        .map(|(i, (t, &ty))| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": ty != USER_DEFINED})
        })
        .collect();
    let post = post_processor(
        &tokens,
        add_bos.then_some(bos).flatten(),
        add_eos.then_some(eos).flatten(),
    );
    let json = if model == "gpt2" {
        gpt2_json(g, file, vocab, added, post)?
    } else {
        llama_json(g, file, &tokens, &types, vocab, added, post)?
    };
    let inner: tokenizers::Tokenizer = serde_json::from_value(json)
        .map_err(|e| Error::BadFile(format!("{file}: the GGUF tokenizer does not build: {e}")))?;
    let template = g.string("tokenizer.chat_template").map_err(in_file)?;
    let text = |id: Option<u32>| id.map(|i| tokens[i as usize].clone());
    Tokenizer::new(inner, template, text(bos), text(eos), bos, &c.eos_token_ids).map(Some)
}

/// BOS / EOS around every sequence, as transformers' `TemplateProcessing` adds them.
fn post_processor(tokens: &[String], bos: Option<u32>, eos: Option<u32>) -> Value {
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    let special = |id: u32| json!({"SpecialToken": {"id": tokens[id as usize], "type_id": 0}});
    let seq = |s: &str| json!({"Sequence": {"id": s, "type_id": 0}});
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Map::new();
    if let Some(b) = bos {
        single.push(special(b));
        pair.push(special(b));
    }
    single.push(seq("A"));
    pair.push(seq("A"));
    pair.push(seq("B"));
    if let Some(e) = eos {
        single.push(special(e));
        pair.push(special(e));
    }
    for id in bos.into_iter().chain(eos) {
        let t = &tokens[id as usize];
        specials.insert(t.clone(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
}

fn gpt2_json(
    g: &Gguf,
    file: &str,
    vocab: Map<String, Value>,
    added: Vec<Value>,
    post: Value,
) -> Result<Value> {
    let in_file = |e: Error| match e {
        Error::BadFile(m) => Error::BadFile(format!("{file}: {m}")),
        other => other,
    };
    let key = "tokenizer.ggml.merges";
    let merges: Vec<Value> = g
        .strings(key)
        .map_err(in_file)?
        .ok_or_else(|| Error::BadFile(format!("{file}: metadata key `{key}` is missing")))?
        .iter()
        .map(|m| {
            // llama.cpp splits at the first space after the first character.
            m.char_indices()
                .skip(1)
                .find(|&(_, ch)| ch == ' ')
                .map(|(i, _)| json!([&m[..i], &m[i + 1..]]))
                .ok_or_else(|| bad(file, key, format!("{m:?} is not two tokens")))
        })
        .collect::<Result<_>>()?;
    let pre = g.string("tokenizer.ggml.pre").map_err(in_file)?;
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    // bitnet.cpp's converter for microsoft/bitnet-b1.58-2B-4T writes no `pre`; its vocabulary is
    // Llama 3's, which transformers splits with Llama 3's regex.
    let llama3_vocab = vocab.contains_key("<|begin_of_text|>");
    let default = if llama3_vocab { "llama-bpe" } else { "default" };
    let (pre_tokenizer, ignore_merges) = match pre.as_deref().unwrap_or(default) {
        // ByteLevel's own regex is GPT-2's.
        "default" | "gpt-2" | "gpt2" => (byte_level(true), false),
        "llama-bpe" | "llama3" | "llama-v3" => {
            let split = json!({"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": false});
            (json!({"type": "Sequence", "pretokenizers": [split, byte_level(false)]}), true)
        }
        other => {
            return Err(Error::Unsupported {
                what: "tokenizer pre-tokenizer",
                detail: format!(
                    "{other:?} (`tokenizer.ggml.pre` in {file}); supported: \"default\", \"gpt-2\", \"llama-bpe\""
                ),
            })
        }
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": pre_tokenizer, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}
    }))
}

fn llama_json(
    g: &Gguf,
    file: &str,
    tokens: &[String],
    types: &[i64],
    vocab: Map<String, Value>,
    added: Vec<Value>,
    post: Value,
) -> Result<Value> {
    let in_file = |e: Error| match e {
        Error::BadFile(m) => Error::BadFile(format!("{file}: {m}")),
        other => other,
    };
    let key = "tokenizer.ggml.scores";
    let scores = g
        .floats(key)
        .map_err(in_file)?
        .ok_or_else(|| Error::BadFile(format!("{file}: metadata key `{key}` is missing")))?;
    if scores.len() != tokens.len() {
        return Err(bad(
            file,
            key,
            format!("{} scores for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let unk = types
        .iter()
        .position(|&t| t == UNKNOWN)
        .map(|i| tokens[i].clone());
    let prefix = g
        .boolean("tokenizer.ggml.add_space_prefix")
        .map_err(in_file)?
        .unwrap_or(true);
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let normalizer = if prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": null, "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                  "ignore_merges": false, "vocab": vocab, "merges": sentencepiece_merges(tokens, &scores)}
    }))
}

/// transformers' `SentencePieceExtractor`: every split of a token into two tokens is a merge,
/// ordered by the merged token's score (highest first), then by its id, then by the two
/// halves' ids. llama.cpp's tokenizer merges the best-scoring adjacent pair first: the same order.
fn sentencepiece_merges(tokens: &[String], scores: &[f64]) -> Vec<Value> {
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .rev()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let mut merges: Vec<(usize, usize, usize)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        if ids[t.as_str()] != id {
            continue;
        }
        for (cut, _) in t.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&t[..cut]), ids.get(&t[cut..])) {
                merges.push((id, l, r));
            }
        }
    }
    merges.sort_by(|a, b| {
        scores[b.0]
            .total_cmp(&scores[a.0])
            .then((a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)))
    });
    merges
        .into_iter()
        .map(|(_, l, r)| json!([tokens[l], tokens[r]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::testing::{file, Meta};

    fn config(vocab: usize) -> ModelConfig {
        let mut c = ModelConfig::bitnet_b158_2b4t();
        c.vocab_size = vocab;
        c.eos_token_ids = vec![2];
        c
    }

    fn strs(v: &[&str]) -> Meta {
        Meta::Strs(v.iter().map(|s| s.to_string()).collect())
    }

    /// A SentencePiece vocabulary whose merges are worked out by hand below.
    fn spm_meta() -> Vec<(&'static str, Meta)> {
        let tokens = [
            "<unk>",
            "<s>",
            "</s>",
            "<0x21>",
            "\u{2581}",
            "h",
            "e",
            "l",
            "o",
            "w",
            "r",
            "d",
            "ll",
            "\u{2581}h",
            "\u{2581}he",
            "llo",
            "\u{2581}hello",
            "or",
            "\u{2581}w",
        ];
        let mut scores = vec![0.0f32, 0.0, 0.0, 0.0];
        scores.extend([-100.0; 8]);
        scores.extend([-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0]);
        let mut types = vec![2, 3, 3, 6];
        types.extend([1; 15]);
        vec![
            ("tokenizer.ggml.model", Meta::Str("llama".into())),
            ("tokenizer.ggml.tokens", strs(&tokens)),
            ("tokenizer.ggml.scores", Meta::F32s(scores)),
            ("tokenizer.ggml.token_type", Meta::I32s(types)),
            ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
            ("tokenizer.ggml.eos_token_id", Meta::U32(2)),
        ]
    }

    #[test]
    fn sentencepiece_merges_by_score_with_byte_fallback() {
        let bytes = file(&spm_meta(), &[]);
        let g = crate::gguf::parse(&bytes).unwrap();
        let t = from_gguf(&g, &config(19), "m.gguf").unwrap().unwrap();
        // "▁hello▁world": ll, ▁h, ▁he, llo, ▁hello, or, ▁w in score order; l and d stay.
        assert_eq!(
            t.encode("hello world", true).unwrap(),
            [1, 16, 18, 17, 7, 11]
        );
        // "!" is not a token: it falls back to its byte token.
        assert_eq!(t.encode("h!", false).unwrap(), [13, 3]);
        assert_eq!(t.decode(&[13, 3], false).unwrap(), "h!");
        assert_eq!(
            t.decode(&[16, 18, 17, 7, 11], false).unwrap(),
            "hello world"
        );
        assert_eq!((t.bos_token_id(), t.eos_token_ids()), (Some(1), &[2][..]));
    }

    #[test]
    fn byte_level_bpe_with_chat_template() {
        // Byte-level tokens: "Ġ" is the space byte.
        let tokens = ["<|s|>", "h", "i", "Ġ", "Ġh", "Ġhi", "!", "<|end|>"];
        let bytes = file(
            &[
                ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
                ("tokenizer.ggml.pre", Meta::Str("llama-bpe".into())),
                ("tokenizer.ggml.tokens", strs(&tokens)),
                ("tokenizer.ggml.token_type", Meta::I32s(vec![3, 1, 1, 1, 1, 1, 1, 3])),
                ("tokenizer.ggml.merges", strs(&["Ġ h", "Ġh i"])),
                ("tokenizer.ggml.bos_token_id", Meta::U32(0)),
                ("tokenizer.ggml.eos_token_id", Meta::U32(7)),
                ("tokenizer.ggml.add_bos_token", Meta::Bool(true)),
                (
                    "tokenizer.chat_template",
                    Meta::Str("{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}".into()),
                ),
            ],
            &[],
        );
        let g = crate::gguf::parse(&bytes).unwrap();
        let t = from_gguf(&g, &config(8), "m.gguf").unwrap().unwrap();
        assert_eq!(t.encode("hi hi!<|end|>", true).unwrap(), [0, 1, 2, 5, 6, 7]);
        assert_eq!(t.decode(&[0, 1, 2, 5, 6, 7], true).unwrap(), "hi hi!");
        let chat = t
            .apply_chat_template(&[("user".into(), "hi".into())], true)
            .unwrap();
        assert_eq!(chat, "<|s|>hi<|end|>");
        assert_eq!(t.eos_token_ids(), [2, 7]);
    }

    #[test]
    fn without_pre_a_llama3_vocabulary_splits_digits_by_three() {
        let tokens = ["1", "2", "3", "4", "5", "12", "34", "<|begin_of_text|>"];
        let meta = |pre: Option<&str>, bot: &str| {
            let mut t: Vec<&str> = tokens.to_vec();
            t[7] = bot;
            let mut m = vec![
                ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
                ("tokenizer.ggml.tokens", strs(&t)),
                ("tokenizer.ggml.merges", strs(&["3 4", "1 2"])),
            ];
            if let Some(p) = pre {
                m.push(("tokenizer.ggml.pre", Meta::Str(p.into())));
            }
            file(&m, &[])
        };
        let encode = |bytes: Vec<u8>| {
            let g = crate::gguf::parse(&bytes).unwrap();
            let t = from_gguf(&g, &config(8), "m.gguf").unwrap().unwrap();
            t.encode("12345", false).unwrap()
        };
        // Llama 3 splits "123" | "45"; GPT-2 keeps "12345" whole, so "3 4" merges first.
        assert_eq!(encode(meta(None, "<|begin_of_text|>")), [5, 2, 3, 4]);
        assert_eq!(encode(meta(Some("llama-bpe"), "x")), [5, 2, 3, 4]);
        assert_eq!(encode(meta(None, "x")), [5, 6, 4]);
        assert_eq!(encode(meta(Some("gpt-2"), "<|begin_of_text|>")), [5, 6, 4]);
    }

    #[test]
    fn bad_tokenizer_metadata_names_the_key() {
        let cases: Vec<(Vec<(&'static str, Meta)>, &str)> = vec![
            (
                vec![("tokenizer.ggml.model", Meta::Str("bert".into()))],
                "tokenizer.ggml.model",
            ),
            (
                vec![("tokenizer.ggml.bos_token_id", Meta::U32(19))],
                "bos_token_id",
            ),
            (
                vec![("tokenizer.ggml.scores", Meta::F32s(vec![0.0]))],
                "tokenizer.ggml.scores",
            ),
            (
                vec![("tokenizer.ggml.token_type", Meta::I32s(vec![1]))],
                "token_type",
            ),
            (
                vec![("tokenizer.ggml.tokens", strs(&["a"; 30]))],
                "tokenizer.ggml.tokens",
            ),
        ];
        for (extra, needle) in cases {
            let keys: Vec<&str> = extra.iter().map(|(k, _)| *k).collect();
            let mut meta: Vec<(&str, Meta)> = spm_meta()
                .into_iter()
                .filter(|(k, _)| !keys.contains(k))
                .collect();
            meta.extend(extra);
            let bytes = file(&meta, &[]);
            let g = crate::gguf::parse(&bytes).unwrap();
            let err = match from_gguf(&g, &config(19), "m.gguf") {
                Err(e) => e.to_string(),
                Ok(_) => panic!("{needle}: loaded"),
            };
            assert!(
                err.contains(needle) && err.contains("m.gguf"),
                "{needle}: {err}"
            );
        }
    }
}
