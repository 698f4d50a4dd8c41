//! Packed safetensors files (docs/FORMATS.md, "Packed safetensors").
//!
//! A packed matrix `NAME` is stored as `NAME.packed` (I32 `[rows, ceil(cols / 16)]`,
//! the I2 words), `NAME.scale` (F32 scalar `[]` per tensor or `[rows]` per row; absent
//! for no scale) and the metadata entry `NAME.cols` (the logical column count); an INT2
//! matrix also has the metadata entry `NAME.levels` = `int2`. Other tensors pass through
//! unchanged. The metadata key `format` is `warp-bitnet/i2`, or `warp-bitnet/i2+int2` when
//! the file holds INT2 matrices.

use std::collections::{BTreeMap, HashMap};

use half::{bf16, f16};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::format::{i2, Int2Matrix, PackedWeights, Scale, TernaryMatrix};

/// Value of the `format` metadata key of a packed file of ternary matrices only.
pub const FORMAT_TAG: &str = "warp-bitnet/i2";
/// Value of the `format` metadata key of a packed file holding INT2 matrices: a reader that
/// knows only ternary refuses it instead of misreading INT2 words as ternary codes.
pub const FORMAT_TAG_INT2: &str = "warp-bitnet/i2+int2";

/// A file mapped read-only into memory: checkpoints are read in place, not copied.
pub struct Mapped {
    map: Option<memmap2::Mmap>,
}

impl Mapped {
    /// Maps `path`; an empty file maps to no bytes.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let file = std::fs::File::open(path)
            .map_err(|e| Error::BadFile(format!("{}: cannot open: {e}", path.display())))?;
        let len = file.metadata()?.len();
        if len == 0 {
            return Ok(Self { map: None });
        }
        // SAFETY: the map is read-only and private to this process; the one hazard is another
        // process truncating or rewriting the file while it is mapped, which (as for every
        // mmap-based model loader) the user must not do. Every read is bounds-checked against
        // the length the map had when it was made.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| Error::BadFile(format!("{}: cannot map: {e}", path.display())))?;
        Ok(Self { map: Some(map) })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// A tensor stored as it came: dtype, shape and raw little-endian bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw bytes.
    pub data: Vec<u8>,
}

/// The contents of a packed file: ternary matrices plus tensors kept as they were.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PackedFile {
    /// Packed ternary matrices by name.
    pub matrices: BTreeMap<String, TernaryMatrix>,
    /// Packed INT2 matrices by name.
    pub int2: BTreeMap<String, Int2Matrix>,
    /// Everything else, unchanged.
    pub other: BTreeMap<String, RawTensor>,
}

impl PackedFile {
    /// Serializes to safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
        let tag = if self.int2.is_empty() {
            FORMAT_TAG
        } else {
            FORMAT_TAG_INT2
        };
        let mut meta = HashMap::from([("format".to_string(), tag.to_string())]);
        for (name, m) in &self.matrices {
            push_packed(&mut owned, &mut meta, name, m);
        }
        for (name, m) in &self.int2 {
            if self.matrices.contains_key(name) {
                return Err(Error::Unsupported {
                    what: "tensor name",
                    detail: format!("`{name}` is both a ternary and an INT2 matrix"),
                });
            }
            push_packed(&mut owned, &mut meta, name, m);
            meta.insert(format!("{name}.levels"), INT2_LEVELS.to_string());
        }
        for (name, t) in &self.other {
            // A kept tensor must not read back as part of a matrix.
            let base = name
                .strip_suffix(".packed")
                .or_else(|| name.strip_suffix(".scale"));
            let is_matrix = |b: &str| self.matrices.contains_key(b) || self.int2.contains_key(b);
            if name.ends_with(".packed") || base.is_some_and(is_matrix) {
                return Err(Error::Unsupported {
                    what: "tensor name",
                    detail: format!("`{name}` collides with the names of a packed matrix"),
                });
            }
            owned.push((name.clone(), t.dtype, t.shape.clone(), t.data.clone()));
        }
        let views = owned
            .iter()
            .map(|(n, d, s, b)| Ok((n.as_str(), TensorView::new(*d, s.clone(), b).map_err(bad)?)))
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, Some(meta)).map_err(bad)
    }

    /// Parses and validates safetensors bytes written by [`PackedFile::to_bytes`].
    ///
    /// Every packed matrix is checked (codes, padding, scale length, `cols`), so a
    /// truncated or hostile file gives [`Error::BadFile`] or a format error, never a panic.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(bad)?;
        let meta = header.metadata().clone().unwrap_or_default();
        let int2_allowed = match meta.get("format").map(String::as_str) {
            Some(FORMAT_TAG) => false,
            Some(FORMAT_TAG_INT2) => true,
            _ => {
                return Err(Error::BadFile(format!(
                    "metadata `format` is not `{FORMAT_TAG}` or `{FORMAT_TAG_INT2}`"
                )))
            }
        };
        let st = SafeTensors::deserialize(bytes).map_err(bad)?;
        let mut file = PackedFile::default();
        for (name, view) in st.iter() {
            if let Some(base) = name.strip_suffix(".packed") {
                let (rows, cols, words, scale) = read_packed(&st, &meta, base, &view)?;
                match meta.get(&format!("{base}.levels")).map(String::as_str) {
                    None => {
                        let m = TernaryMatrix::from_i2(rows, cols, words, scale)?;
                        file.matrices.insert(base.to_string(), m);
                    }
                    Some(INT2_LEVELS) if int2_allowed => {
                        let m = Int2Matrix::from_words(rows, cols, words, scale)?;
                        file.int2.insert(base.to_string(), m);
                    }
                    Some(other) => {
                        let expected = if int2_allowed {
                            "none or `int2`"
                        } else {
                            "none: `format` is ternary only"
                        };
                        return Err(Error::BadFile(format!(
                            "metadata `{base}.levels` is {other:?}; expected {expected}"
                        )));
                    }
                }
            } else if name
                .strip_suffix(".scale")
                .is_some_and(|b| st.tensor(&format!("{b}.packed")).is_ok())
            {
                // Read with its matrix.
            } else {
                let raw = RawTensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    data: view.data().to_vec(),
                };
                file.other.insert(name.to_string(), raw);
            }
        }
        Ok(file)
    }
}

/// Value of the `NAME.levels` metadata entry of an INT2 matrix.
const INT2_LEVELS: &str = "int2";

type Owned = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn push_packed(
    owned: &mut Owned,
    meta: &mut HashMap<String, String>,
    name: &str,
    m: &impl PackedWeights,
) {
    let wpr = i2::words_per_row(m.cols());
    let bytes: Vec<u8> = m.words().iter().flat_map(|w| w.to_le_bytes()).collect();
    owned.push((
        format!("{name}.packed"),
        Dtype::I32,
        vec![m.rows(), wpr],
        bytes,
    ));
    let scale = match m.scale() {
        Scale::None => None,
        Scale::PerTensor(s) => Some((vec![], vec![*s])),
        Scale::PerRow(v) => Some((vec![m.rows()], v.clone())),
    };
    if let Some((shape, s)) = scale {
        let bytes = s.iter().flat_map(|v| v.to_le_bytes()).collect();
        owned.push((format!("{name}.scale"), Dtype::F32, shape, bytes));
    }
    meta.insert(format!("{name}.cols"), m.cols().to_string());
}

/// The shape, words and scale of packed matrix `name`, checked for consistency (the
/// codes are checked by the matrix constructors).
fn read_packed(
    st: &SafeTensors,
    meta: &HashMap<String, String>,
    name: &str,
    view: &TensorView,
) -> Result<(usize, usize, Vec<u32>, Scale)> {
    let (&[rows, wpr], Dtype::I32) = (view.shape(), view.dtype()) else {
        return Err(Error::BadFile(format!(
            "`{name}.packed` must be a 2-D I32 tensor"
        )));
    };
    let cols: usize = meta
        .get(&format!("{name}.cols"))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            Error::BadFile(format!("metadata `{name}.cols` is missing or not a number"))
        })?;
    if i2::words_per_row(cols) != wpr {
        return Err(Error::BadFile(format!(
            "`{name}`: {cols} columns do not fit {wpr} words per row"
        )));
    }
    let words = le_u32(view.data());
    let scale = match st.tensor(&format!("{name}.scale")) {
        Err(_) => Scale::None,
        Ok(s) if s.dtype() == Dtype::F32 && s.shape().is_empty() => {
            Scale::PerTensor(f32s(s.data())[0])
        }
        Ok(s) if s.dtype() == Dtype::F32 && s.shape() == [rows] => Scale::PerRow(f32s(s.data())),
        Ok(s) => {
            return Err(Error::BadFile(format!(
                "`{name}.scale` must be F32 [] (per tensor) or [{rows}] (per row), got {:?} {:?}",
                s.dtype(),
                s.shape()
            )))
        }
    };
    Ok((rows, cols, words, scale))
}

/// Reads a 2-D F32, F16 or BF16 tensor as `(rows, cols, values)`.
pub fn dense_f32(view: &TensorView) -> Result<(usize, usize, Vec<f32>)> {
    let &[rows, cols] = view.shape() else {
        return Err(Error::Unsupported {
            what: "tensor rank",
            detail: format!("{:?}, need 2-D", view.shape()),
        });
    };
    Ok((rows, cols, floats(view)?))
}

/// Reads an F32, F16 or BF16 tensor of any shape as flat values.
pub fn floats(view: &TensorView) -> Result<Vec<f32>> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => f32s(d),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::Unsupported {
                what: "dtype",
                detail: format!("{other:?}, need F32, F16 or BF16"),
            })
        }
    })
}

fn le_u32(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    le_u32(b).into_iter().map(f32::from_bits).collect()
}

fn bad(e: safetensors::SafeTensorError) -> Error {
    Error::BadFile(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PackedFile {
        let mut f = PackedFile::default();
        let w =
            TernaryMatrix::from_ternary(2, 17, &[1; 34], Scale::PerRow(vec![0.5, 2.0])).unwrap();
        f.matrices.insert("layer.w".into(), w);
        let w = TernaryMatrix::from_ternary(1, 3, &[-1, 0, 1], Scale::None).unwrap();
        f.matrices.insert("noscale".into(), w);
        let codes: Vec<u8> = (0..2 * 19).map(|i| (i % 4) as u8).collect();
        let q = Int2Matrix::from_codes(2, 19, &codes, Scale::PerRow(vec![0.25, 3.0])).unwrap();
        f.int2.insert("int2.w".into(), q);
        f.other.insert(
            "norm".into(),
            RawTensor {
                dtype: Dtype::F32,
                shape: vec![1],
                data: vec![0, 0, 128, 63],
            },
        );
        f
    }

    #[test]
    fn round_trip() {
        let f = sample();
        assert_eq!(PackedFile::from_bytes(&f.to_bytes().unwrap()).unwrap(), f);
        // One row: a per-row scale stays per row, a per-tensor scale per tensor.
        let mut f = PackedFile::default();
        let row = TernaryMatrix::from_ternary(1, 3, &[1, 0, -1], Scale::PerRow(vec![2.0])).unwrap();
        f.matrices.insert("row".into(), row);
        let tensor = TernaryMatrix::from_ternary(1, 3, &[1, 0, -1], Scale::PerTensor(2.0)).unwrap();
        f.matrices.insert("tensor".into(), tensor);
        assert_eq!(PackedFile::from_bytes(&f.to_bytes().unwrap()).unwrap(), f);
    }

    #[test]
    fn int2_levels_tag_is_checked() {
        let bytes = sample().to_bytes().unwrap();
        let needle = b"\"int2.w.levels\":\"int2\"";
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        let mut evil = bytes.clone();
        evil[at + needle.len() - 2] = b'3';
        assert!(matches!(
            PackedFile::from_bytes(&evil),
            Err(Error::BadFile(_))
        ));
        // An INT2 matrix under the ternary-only tag.
        let tag = b"\"format\":\"warp-bitnet/i2+int2\"";
        let at = bytes.windows(tag.len()).position(|w| w == tag).unwrap();
        let mut evil = bytes.clone();
        // `+int2"` -> `"` and spaces: still valid JSON, now the ternary tag.
        evil[at + tag.len() - 6..at + tag.len()].copy_from_slice(b"\"     ");
        let err = PackedFile::from_bytes(&evil).unwrap_err();
        assert!(err.to_string().contains("ternary only"), "{err}");
        // The same name as ternary and INT2.
        let mut f = sample();
        let q = f.int2["int2.w"].clone();
        f.int2.insert("noscale".into(), q);
        assert!(matches!(f.to_bytes(), Err(Error::Unsupported { .. })));
    }

    #[test]
    fn colliding_names_are_refused() {
        for name in ["layer.w.scale", "noscale.scale", "x.packed", "int2.w.scale"] {
            let mut f = sample();
            f.other.insert(
                name.into(),
                RawTensor {
                    dtype: Dtype::F32,
                    shape: vec![1],
                    data: vec![0; 4],
                },
            );
            assert!(
                matches!(f.to_bytes(), Err(Error::Unsupported { .. })),
                "{name}"
            );
        }
    }

    #[test]
    fn truncated_and_tampered_files_are_errors() {
        let bytes = sample().to_bytes().unwrap();
        for cut in [0, 7, 8, 100, bytes.len() - 1] {
            assert!(
                PackedFile::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // Turn the first weight's code into the invalid 0b11.
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let data = st.tensor("layer.w.packed").unwrap().data();
        let at = data.as_ptr() as usize - bytes.as_ptr() as usize;
        let mut evil = bytes.clone();
        evil[at] |= 0b11;
        assert!(matches!(
            PackedFile::from_bytes(&evil),
            Err(Error::InvalidCode { row: 0, col: 0, .. })
        ));
        // A lying column count.
        let needle = b"\"layer.w.cols\":\"17\"";
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap();
        let mut evil = bytes.clone();
        evil[at + needle.len() - 3..at + needle.len() - 1].copy_from_slice(b"99");
        assert!(matches!(
            PackedFile::from_bytes(&evil),
            Err(Error::BadFile(_))
        ));
    }
}
