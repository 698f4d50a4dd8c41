//! Finding a model's config, weights and tokenizer on disk: a Hugging Face folder (pre-packed U8
//! or dense float weights, possibly sharded), our packed safetensors, or a GGUF file
//! ([`gguf_model`](super::gguf_model)).

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

use super::config::ModelConfig;
use super::store::Store;
use super::tokenizer::Tokenizer;
use super::weights::Weights;
use crate::error::{Error, Result};
use crate::io::{Mapped, PackedFile, FORMAT_TAG, FORMAT_TAG_INT2};

/// What a path holds, read into memory (weights memory-mapped where they are used as stored).
pub(crate) struct Loaded {
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: Option<Tokenizer>,
}

/// Loads the model at `path`: a folder with `config.json`, a `.safetensors` file with
/// `config.json` beside it, or a GGUF file.
pub(crate) fn load(path: &Path) -> Result<Loaded> {
    if !path.exists() {
        return Err(Error::BadFile(format!(
            "{}: no such file or folder",
            path.display()
        )));
    }
    if path.is_file() && is_gguf(path)? {
        return super::gguf_model::load(path);
    }
    let (dir, files) = if path.is_dir() {
        (path.to_path_buf(), safetensors_in(path)?)
    } else {
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        (dir, vec![path.to_path_buf()])
    };
    let config = ModelConfig::from_hf_file(&dir.join("config.json"))?;
    let mut store = Store::default();
    for f in &files {
        add_file(&mut store, f)?;
    }
    let weights = Weights::from_store(&config, &store)?;
    let tokenizer = Tokenizer::from_dir(&dir, config.bos_token_id, &config.eos_token_ids)?;
    Ok(Loaded {
        config,
        weights,
        tokenizer,
    })
}

/// The configuration of the model at `path` (as [`load`] would read it), without its weights.
pub fn model_config(path: &Path) -> Result<ModelConfig> {
    if !path.exists() {
        return Err(Error::BadFile(format!(
            "{}: no such file or folder",
            path.display()
        )));
    }
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    if path.is_file() && is_gguf(path)? {
        return super::gguf_model::model_config(path);
    }
    ModelConfig::from_hf_file(&dir.join("config.json"))
}

fn is_gguf(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path)?;
    Ok(f.read(&mut magic)? == 4 && &magic == b"GGUF")
}

/// The `*.safetensors` files of a folder, sorted (shards in order).
fn safetensors_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::BadFile(format!(
            "{}: no *.safetensors files in the folder",
            dir.display()
        )));
    }
    Ok(files)
}

/// Adds one safetensors file: ours (by its `format` tag) decoded, any other mapped as is.
fn add_file(store: &mut Store, path: &Path) -> Result<()> {
    let map = Mapped::open(path)?;
    let (_, meta) = SafeTensors::read_metadata(map.bytes())
        .map_err(|e| Error::BadFile(format!("{}: {e}", path.display())))?;
    let tag = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("format").cloned());
    match tag.as_deref() {
        Some(FORMAT_TAG) | Some(FORMAT_TAG_INT2) => {
            let file = PackedFile::from_bytes(map.bytes())
                .map_err(|e| Error::BadFile(format!("{}: {e}", path.display())))?;
            store.add_packed(file, path, |n| Some(n.to_string()))
        }
        _ => store.add_safetensors(path, map),
    }
}
