//! The tensors of a checkpoint by their transformers names, whatever file they came from:
//! memory-mapped safetensors (Hugging Face folders), our packed files and GGUF files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype;
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::format::TernaryMatrix;
use crate::io::PackedFile;

/// One stored tensor.
pub(crate) enum Entry {
    /// A packed ternary matrix (its scale folded in), ready to use.
    Ternary(TernaryMatrix),
    /// A tensor as stored: dtype, shape and where its bytes are.
    Raw {
        dtype: Dtype,
        shape: Vec<usize>,
        bytes: Bytes,
    },
}

/// Bytes of a raw tensor: a range of a mapped file, or owned.
pub(crate) enum Bytes {
    Mapped {
        file: usize,
        range: std::ops::Range<usize>,
    },
    Owned(Vec<u8>),
}

/// Tensors by name, and the mapped files their bytes live in.
#[derive(Default)]
pub(crate) struct Store {
    files: Vec<crate::io::Mapped>,
    entries: HashMap<String, (Entry, PathBuf)>,
}

impl Store {
    /// Maps a safetensors file and indexes its tensors (validated by the safetensors parser).
    pub fn add_safetensors(&mut self, path: &Path, map: crate::io::Mapped) -> Result<()> {
        let bad =
            |e: safetensors::SafeTensorError| Error::BadFile(format!("{}: {e}", path.display()));
        let st = SafeTensors::deserialize(map.bytes()).map_err(bad)?;
        let base = map.bytes().as_ptr() as usize;
        let file = self.files.len();
        for (name, view) in st.tensors() {
            let start = view.data().as_ptr() as usize - base;
            let entry = Entry::Raw {
                dtype: view.dtype(),
                shape: view.shape().to_vec(),
                bytes: Bytes::Mapped {
                    file,
                    range: start..start + view.data().len(),
                },
            };
            self.insert(name, entry, path)?;
        }
        drop(st);
        self.files.push(map);
        Ok(())
    }

    /// Adds every tensor of one of our packed files (or a converted GGUF file), renaming each
    /// with `rename` (which drops a tensor by returning `None`).
    pub fn add_packed(
        &mut self,
        file: PackedFile,
        path: &Path,
        rename: impl Fn(&str) -> Option<String>,
    ) -> Result<()> {
        for (name, m) in file.matrices {
            if let Some(n) = rename(&name) {
                self.insert(n, Entry::Ternary(m), path)?;
            }
        }
        if let Some(name) = file.int2.keys().next() {
            return Err(Error::Unsupported {
                what: "tensor",
                detail: format!(
                    "`{name}` in {} is an INT2 matrix; the engine runs ternary models",
                    path.display()
                ),
            });
        }
        for (name, t) in file.other {
            if let Some(n) = rename(&name) {
                let entry = Entry::Raw {
                    dtype: t.dtype,
                    shape: t.shape,
                    bytes: Bytes::Owned(t.data),
                };
                self.insert(n, entry, path)?;
            }
        }
        Ok(())
    }

    /// Keeps a mapped file for [`Bytes::Mapped`] entries that the caller indexes itself (GGUF);
    /// returns its index.
    pub fn add_map(&mut self, map: crate::io::Mapped) -> usize {
        self.files.push(map);
        self.files.len() - 1
    }

    /// Adds one tensor; a name already present is an error naming both files.
    pub fn insert(&mut self, name: String, entry: Entry, path: &Path) -> Result<()> {
        if let Some((_, first)) = self.entries.get(&name) {
            return Err(Error::BadFile(format!(
                "tensor `{name}` is in both {} and {}",
                first.display(),
                path.display()
            )));
        }
        self.entries.insert(name, (entry, path.to_path_buf()));
        Ok(())
    }

    /// The entry and the file it came from.
    pub fn get(&self, name: &str) -> Option<(&Entry, &Path)> {
        self.entries.get(name).map(|(e, p)| (e, p.as_path()))
    }

    /// The bytes of a raw entry.
    pub fn bytes<'a>(&'a self, b: &'a Bytes) -> &'a [u8] {
        match b {
            Bytes::Mapped { file, range } => &self.files[*file].bytes()[range.clone()],
            Bytes::Owned(v) => v,
        }
    }

    /// Names of every tensor (for "unused tensor" checks and error messages).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

/// Float bytes (`F32`, `F16`, `BF16`, little-endian) as `f32`.
pub(crate) fn to_f32(dtype: Dtype, b: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}
