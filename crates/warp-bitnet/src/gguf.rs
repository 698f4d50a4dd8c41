//! Just enough of the GGUF container (versions 2 and 3) to load a model: the header, the
//! key-value section (walked and indexed; a value is decoded only when asked for, so a
//! hostile array costs nothing until read), the tensor infos and the data offsets. Every count,
//! length and offset is checked against the bytes, so a truncated or hostile file is
//! [`Error::BadFile`], never a panic or a huge allocation.

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};

/// GGML tensor types this crate reads.
pub(crate) const GGML_F32: u32 = 0;
pub(crate) const GGML_F16: u32 = 1;
pub(crate) const GGML_BF16: u32 = 30;
/// bitnet.cpp's ternary type (its ggml fork).
pub(crate) const GGML_I2_S: u32 = 36;
/// llama.cpp's ternary types: 5 trits per byte, and 2 bits per weight; 256-weight blocks.
pub(crate) const GGML_TQ1_0: u32 = 34;
pub(crate) const GGML_TQ2_0: u32 = 35;

/// Largest number of dimensions of a GGML tensor.
const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays in a metadata value.
const MAX_ARRAY_DEPTH: usize = 4;

/// One tensor: name, GGML dims (`dims[0]` is the innermost, contiguous one), type, bytes.
pub(crate) struct Tensor<'a> {
    pub name: String,
    pub dims: Vec<usize>,
    pub ggml_type: u32,
    pub data: &'a [u8],
}

fn bad(what: impl Into<String>) -> Error {
    Error::BadFile(format!("GGUF: {}", what.into()))
}

struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| bad(format!("truncated at byte {}", self.pos)))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    /// A count of items of at least `min_size` bytes each that must fit the rest of the file.
    fn count(&mut self, min_size: usize, what: &str) -> Result<usize> {
        let n = self.u64()?;
        let left = (self.b.len() - self.pos) as u64;
        if n.saturating_mul(min_size as u64) > left {
            return Err(bad(format!("{what} count {n} exceeds the file")));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.count(1, "string length")?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| bad("a string is not UTF-8"))
    }

    /// Skips a metadata value of type `t`.
    fn skip_value(&mut self, t: u32, depth: usize) -> Result<()> {
        match t {
            0 | 1 | 7 => self.take(1).map(drop),
            2 | 3 => self.take(2).map(drop),
            4..=6 => self.take(4).map(drop),
            10..=12 => self.take(8).map(drop),
            // Skipped strings need not be UTF-8 (some vocabularies are not).
            8 => {
                let n = self.count(1, "string length")?;
                self.take(n).map(drop)
            }
            9 if depth < MAX_ARRAY_DEPTH => {
                let elem = self.u32()?;
                let n = self.count(1, "array")?;
                for _ in 0..n {
                    self.skip_value(elem, depth + 1)?;
                }
                Ok(())
            }
            9 => Err(bad("arrays nested too deep")),
            other => Err(bad(format!("unknown metadata type {other}"))),
        }
    }
}

/// Bytes of a tensor of `n` elements of `ggml_type`, for the types this crate reads.
fn tensor_bytes(ggml_type: u32, n: usize, name: &str) -> Result<usize> {
    let bytes = match ggml_type {
        GGML_F32 => n.checked_mul(4),
        GGML_F16 | GGML_BF16 => n.checked_mul(2),
        GGML_I2_S => Some(n / 4 + 32),
        // Whole blocks only; a partial block is refused when the tensor is decoded.
        GGML_TQ1_0 => (n / 256).checked_mul(54),
        GGML_TQ2_0 => (n / 256).checked_mul(66),
        other => {
            return Err(Error::Unsupported {
                what: "GGML tensor type",
                detail: format!(
                    "{other} (tensor `{name}`); readable: F32, F16, BF16, bitnet.cpp I2_S, llama.cpp TQ1_0 and TQ2_0"
                ),
            })
        }
    };
    bytes.ok_or_else(|| bad(format!("tensor `{name}` is too large")))
}

/// The tensors of a GGUF file, in file order.
pub(crate) fn tensors(bytes: &[u8]) -> Result<Vec<Tensor<'_>>> {
    parse(bytes).map(|g| g.tensors)
}

/// A parsed GGUF file: its tensors, and its metadata by key (type and where the value starts).
pub(crate) struct Gguf<'a> {
    pub tensors: Vec<Tensor<'a>>,
    meta: HashMap<String, (u32, usize)>,
    bytes: &'a [u8],
}

/// Parses the header, indexes the metadata and locates every tensor.
pub(crate) fn parse(bytes: &[u8]) -> Result<Gguf<'_>> {
    let mut c = Cursor { b: bytes, pos: 0 };
    if c.take(4)? != b"GGUF" {
        return Err(bad("no GGUF magic"));
    }
    let version = c.u32()?;
    if !(2..=3).contains(&version) {
        return Err(bad(format!("version {version}; readable: 2 and 3")));
    }
    // Smallest tensor info: empty name (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
    let n_tensors = c.count(32, "tensor")?;
    let n_kv = c.count(13, "metadata")?;
    let mut alignment = 32u64;
    let mut meta = HashMap::new();
    for _ in 0..n_kv {
        let key = c.string()?;
        let t = c.u32()?;
        if meta.insert(key.clone(), (t, c.pos)).is_some() {
            return Err(bad(format!("metadata key `{key}` appears twice")));
        }
        if key == "general.alignment" {
            if t != 4 {
                return Err(bad("general.alignment is not a u32"));
            }
            alignment = u64::from(c.u32()?);
            if !alignment.is_power_of_two() {
                return Err(bad(format!("alignment {alignment} is not a power of two")));
            }
        } else {
            c.skip_value(t, 0)?;
        }
    }
    // Not reserved from the count: the infos are read (and checked) one by one.
    let mut infos = Vec::new();
    let mut names = HashSet::new();
    for _ in 0..n_tensors {
        let name = c.string()?;
        if !names.insert(name.clone()) {
            return Err(bad(format!("tensor `{name}` appears twice")));
        }
        let n_dims = c.u32()? as usize;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(bad(format!("tensor `{name}` has {n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims);
        for _ in 0..n_dims {
            dims.push(usize::try_from(c.u64()?).map_err(|_| bad("a dimension overflows"))?);
        }
        let ggml_type = c.u32()?;
        let offset = c.u64()?;
        infos.push((name, dims, ggml_type, offset));
    }
    let data_start = (c.pos as u64).next_multiple_of(alignment);
    let tensors = infos
        .into_iter()
        .map(|(name, dims, ggml_type, offset)| {
            let n = dims
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| bad(format!("tensor `{name}` is too large")))?;
            let len = tensor_bytes(ggml_type, n, &name)?;
            let start = data_start
                .checked_add(offset)
                .filter(|&s| s <= bytes.len() as u64)
                .ok_or_else(|| bad(format!("tensor `{name}` starts past the end")))?
                as usize;
            let data = bytes
                .get(start..)
                .and_then(|rest| rest.get(..len))
                .ok_or_else(|| bad(format!("tensor `{name}` runs past the end")))?;
            Ok(Tensor {
                name,
                dims,
                ggml_type,
                data,
            })
        })
        .collect::<Result<_>>()?;
    Ok(Gguf {
        tensors,
        meta,
        bytes,
    })
}

/// One decoded metadata value (arrays are decoded by the typed accessors).
enum Scalar {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
}

fn meta_err(key: &str, why: impl std::fmt::Display) -> Error {
    bad(format!("metadata `{key}`: {why}"))
}

impl Cursor<'_> {
    /// A scalar value of type `t` (any type but an array).
    fn scalar(&mut self, t: u32, key: &str) -> Result<Scalar> {
        Ok(match t {
            0 => Scalar::Int(self.take(1)?[0].into()),
            1 => Scalar::Int((self.take(1)?[0] as i8).into()),
            2 => Scalar::Int(u16::from_le_bytes(self.take(2)?.try_into().expect("2")).into()),
            3 => Scalar::Int(i16::from_le_bytes(self.take(2)?.try_into().expect("2")).into()),
            4 => Scalar::Int(self.u32()?.into()),
            5 => Scalar::Int((self.u32()? as i32).into()),
            10 => Scalar::Int(self.u64()?.into()),
            11 => Scalar::Int((self.u64()? as i64).into()),
            6 => Scalar::Float(f32::from_le_bytes(self.take(4)?.try_into().expect("4")).into()),
            12 => Scalar::Float(f64::from_le_bytes(self.take(8)?.try_into().expect("8"))),
            7 => Scalar::Bool(self.take(1)?[0] != 0),
            8 => {
                let n = self.count(1, "string length")?;
                let s = self.take(n)?;
                Scalar::Str(
                    String::from_utf8(s.to_vec())
                        .map_err(|_| meta_err(key, "a string is not UTF-8"))?,
                )
            }
            other => {
                return Err(meta_err(
                    key,
                    format!("value of type {other} where a scalar belongs"),
                ))
            }
        })
    }
}

impl Gguf<'_> {
    fn scalar(&self, key: &str) -> Result<Option<Scalar>> {
        let Some(&(t, pos)) = self.meta.get(key) else {
            return Ok(None);
        };
        let mut c = Cursor { b: self.bytes, pos };
        c.scalar(t, key).map(Some)
    }

    /// The elements of array `key` (`None` if absent; an error if not an array), each converted
    /// by `pick` as it is read, so that what is allocated is at most 8 bytes per byte of file
    /// (a `u8` array read as `i64`), whatever the array claims.
    fn array<T>(
        &self,
        key: &str,
        what: &str,
        pick: impl Fn(Scalar) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(&(t, pos)) = self.meta.get(key) else {
            return Ok(None);
        };
        if t != 9 {
            return Err(meta_err(key, format!("is not an array of {what}")));
        }
        let mut c = Cursor { b: self.bytes, pos };
        let elem = c.u32()?;
        let n = c.count(1, "array")?;
        // Not reserved from the count: a hostile count fails on the bytes, not on allocation.
        let mut out = Vec::new();
        for _ in 0..n {
            let v = c.scalar(elem, key)?;
            out.push(pick(v).ok_or_else(|| meta_err(key, format!("is not an array of {what}")))?);
        }
        Ok(Some(out))
    }

    /// A non-negative integer value.
    pub fn uint(&self, key: &str) -> Result<Option<u64>> {
        match self.scalar(key)? {
            None => Ok(None),
            Some(Scalar::Int(v)) => u64::try_from(v)
                .map(Some)
                .map_err(|_| meta_err(key, format!("{v} is negative"))),
            Some(_) => Err(meta_err(key, "is not an integer")),
        }
    }

    /// A number (float or integer).
    pub fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.scalar(key)? {
            None => Ok(None),
            Some(Scalar::Float(v)) => Ok(Some(v)),
            Some(Scalar::Int(v)) => Ok(Some(v as f64)),
            Some(_) => Err(meta_err(key, "is not a number")),
        }
    }

    /// A boolean.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.scalar(key)? {
            None => Ok(None),
            Some(Scalar::Bool(v)) => Ok(Some(v)),
            Some(_) => Err(meta_err(key, "is not a boolean")),
        }
    }

    /// A string.
    pub fn string(&self, key: &str) -> Result<Option<String>> {
        match self.scalar(key)? {
            None => Ok(None),
            Some(Scalar::Str(v)) => Ok(Some(v)),
            Some(_) => Err(meta_err(key, "is not a string")),
        }
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Option<Vec<String>>> {
        self.array(key, "strings", |v| match v {
            Scalar::Str(s) => Some(s),
            _ => None,
        })
    }

    /// An array of integers (each within i64).
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.array(key, "integers", |v| match v {
            Scalar::Int(i) => i64::try_from(i).ok(),
            _ => None,
        })
    }

    /// An array of numbers.
    pub fn floats(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.array(key, "numbers", |v| match v {
            Scalar::Float(f) => Some(f),
            Scalar::Int(i) => Some(i as f64),
            _ => None,
        })
    }
}

/// A GGUF writer for tests (version 3, alignment 32).
#[cfg(test)]
pub(crate) mod testing {
    /// A metadata value.
    pub enum Meta {
        U32(u32),
        F32(f32),
        Bool(bool),
        Str(String),
        Strs(Vec<String>),
        I32s(Vec<i32>),
        F32s(Vec<f32>),
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    /// The file of `meta` and `tensors` (name, GGML dims, type, data).
    pub fn file(meta: &[(&str, Meta)], tensors: &[(&str, Vec<usize>, u32, Vec<u8>)]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((meta.len() as u64).to_le_bytes());
        for (key, v) in meta {
            string(&mut out, key);
            let array = |out: &mut Vec<u8>, t: u32, n: usize| {
                out.extend(9u32.to_le_bytes());
                out.extend(t.to_le_bytes());
                out.extend((n as u64).to_le_bytes());
            };
            match v {
                Meta::U32(x) => out.extend(4u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
                Meta::F32(x) => out.extend(6u32.to_le_bytes().into_iter().chain(x.to_le_bytes())),
                Meta::Bool(x) => out.extend(7u32.to_le_bytes().into_iter().chain([*x as u8])),
                Meta::Str(s) => {
                    out.extend(8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Meta::Strs(items) => {
                    array(&mut out, 8, items.len());
                    items.iter().for_each(|s| string(&mut out, s));
                }
                Meta::I32s(items) => {
                    array(&mut out, 5, items.len());
                    items.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
                Meta::F32s(items) => {
                    array(&mut out, 6, items.len());
                    items.iter().for_each(|x| out.extend(x.to_le_bytes()));
                }
            }
        }
        let mut offset = 0usize;
        let mut offsets = Vec::new();
        for (name, dims, t, data) in tensors {
            string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            dims.iter()
                .for_each(|&d| out.extend((d as u64).to_le_bytes()));
            out.extend(t.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len()).next_multiple_of(32);
        }
        let start = out.len().next_multiple_of(32);
        for ((_, _, _, data), off) in tensors.iter().zip(offsets) {
            out.resize(start + off, 0);
            out.extend(data);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{file, Meta};
    use super::*;

    #[test]
    fn metadata_reads_by_type_and_names_the_key() {
        let bytes = file(
            &[
                ("a.count", Meta::U32(7)),
                ("a.eps", Meta::F32(1e-5)),
                ("a.flag", Meta::Bool(true)),
                ("a.name", Meta::Str("x".into())),
                ("a.list", Meta::Strs(vec!["p".into(), "q r".into()])),
                ("a.ints", Meta::I32s(vec![-1, 3])),
                ("a.floats", Meta::F32s(vec![0.5, -2.0])),
            ],
            &[],
        );
        let g = parse(&bytes).unwrap();
        assert_eq!(g.uint("a.count").unwrap(), Some(7));
        assert_eq!(g.float("a.eps").unwrap(), Some(1e-5f32 as f64));
        assert_eq!(g.float("a.count").unwrap(), Some(7.0));
        assert_eq!(g.boolean("a.flag").unwrap(), Some(true));
        assert_eq!(g.string("a.name").unwrap().as_deref(), Some("x"));
        assert_eq!(g.strings("a.list").unwrap().unwrap(), ["p", "q r"]);
        assert_eq!(g.ints("a.ints").unwrap().unwrap(), [-1, 3]);
        assert_eq!(g.floats("a.floats").unwrap().unwrap(), [0.5, -2.0]);
        assert_eq!(g.uint("a.missing").unwrap(), None);
        for err in [
            g.uint("a.name").unwrap_err(),
            g.string("a.count").unwrap_err(),
            g.strings("a.ints").unwrap_err(),
            g.ints("a.eps").unwrap_err(),
        ] {
            assert!(err.to_string().contains("metadata `a."), "{err}");
        }
        let neg = file(&[("n", Meta::I32s(vec![-1]))], &[]);
        assert!(parse(&neg).unwrap().uint("n").is_err());
    }
}
