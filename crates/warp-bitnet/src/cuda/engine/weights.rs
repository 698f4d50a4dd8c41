//! The model's weights on the device: every linear layer's T2 tiles with per-row scales, or its
//! dense bf16 `w * scale` (`LinearWeights::DenseBf16`), q|k|v and gate|up stacked into one GEMM
//! each unless every layer normalizes its own input; f32 norms; the embedding / lm_head tables
//! in the narrowest exact type (`tables::table_dtype`).

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, DeviceRepr, ValidAsZeroBits};

use super::tables::{stack, table_bytes, table_dtype};
use crate::cpu::dense::DenseMatrix;
use crate::cuda::{Gpu, GpuMatrix};
use crate::dtype::DType;
use crate::engine::config::ModelConfig;
use crate::engine::weights::{Layer, Linear, Weights};
use crate::engine::LinearWeights;
use crate::error::{checked_elems, Result};
use crate::format::Levels;

/// A device buffer and its raw address (taken once: launches and graph capture use the
/// address; the buffer owns the memory).
pub(crate) struct Dev<T> {
    buf: CudaSlice<T>,
    pub ptr: CUdeviceptr,
}

impl<T: DeviceRepr> Dev<T> {
    pub fn upload(stream: &Arc<CudaStream>, host: &[T]) -> Result<Self> {
        Ok(Self::wrap(stream, stream.clone_htod(host)?))
    }

    fn wrap(stream: &Arc<CudaStream>, buf: CudaSlice<T>) -> Self {
        let ptr = buf.device_ptr(stream).0;
        Self { buf, ptr }
    }

    /// The first `len` elements.
    pub fn view(&self, len: usize) -> CudaView<'_, T> {
        self.buf.slice(0..len)
    }

    /// Copies `host` into the first `host.len()` elements, in `stream`'s order.
    pub fn write(&mut self, stream: &Arc<CudaStream>, host: &[T]) -> Result<()> {
        if host.is_empty() {
            return Ok(());
        }
        stream.memcpy_htod(host, &mut self.buf.slice_mut(0..host.len()))?;
        Ok(())
    }

    /// Zeroes elements `range`, in `stream`'s order.
    pub fn zero(&mut self, stream: &Arc<CudaStream>, range: std::ops::Range<usize>) -> Result<()>
    where
        T: ValidAsZeroBits,
    {
        stream.memset_zeros(&mut self.buf.slice_mut(range))?;
        Ok(())
    }

    /// The address of element `i`.
    pub fn at(&self, i: usize) -> CUdeviceptr {
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }
}

impl<T: DeviceRepr + ValidAsZeroBits> Dev<T> {
    pub fn zeros(stream: &Arc<CudaStream>, n: usize) -> Result<Self> {
        Ok(Self::wrap(stream, stream.alloc_zeros::<T>(n.max(1))?))
    }
}

/// The matrix of one GEMM, as the engine's [`LinearWeights`] holds it.
pub(crate) enum GemmMatrix {
    /// T2 tiles; the GEMM writes raw int32 sums, scaled per row (`scale`) by the kernel that
    /// reads them.
    Ternary {
        /// Boxed: the matrix is large beside the dense variant's one buffer.
        w: Box<GpuMatrix>,
        /// The tiles' address.
        tiles: CUdeviceptr,
        /// `[rows]` weight scale.
        scale: Dev<f32>,
    },
    /// `[rows, cols]` bf16 `w * scale` (rounded once, as a dense checkpoint holds it),
    /// multiplied by cuBLAS into f32.
    DenseBf16(Dev<u16>),
}

/// One GEMM: one linear layer, or several stacked.
pub(crate) struct Gemm {
    pub matrix: GemmMatrix,
    rows: usize,
    cols: usize,
    /// `[rows]` bias.
    pub bias: Option<Dev<f32>>,
    /// `[cols]` the layer's own activation RMSNorm (`use_rms_norm`; never stacked).
    pub norm: Option<Dev<f32>>,
}

impl Gemm {
    fn new(
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        parts: &[&Linear],
        kind: LinearWeights,
    ) -> Result<Self> {
        let s = stack(parts)?;
        let (rows, cols) = (s.w.rows(), s.w.cols());
        let scale = Dev::upload(stream, &s.scale)?;
        let matrix = match kind {
            LinearWeights::Ternary => {
                let w = Box::new(gpu.upload(&s.w, stream)?);
                let tiles = w.device_ptrs(stream).tiles;
                GemmMatrix::Ternary { w, tiles, scale }
            }
            LinearWeights::DenseBf16 => GemmMatrix::DenseBf16(dense_bf16(gpu, stream, &s, &scale)?),
        };
        let norm = match parts {
            [one] => one
                .norm
                .as_deref()
                .map(|n| Dev::upload(stream, n))
                .transpose()?,
            _ => None,
        };
        Ok(Self {
            matrix,
            rows,
            cols,
            bias: s.bias.map(|b| Dev::upload(stream, &b)).transpose()?,
            norm,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes a decode step reads of this GEMM's matrix and scales.
    pub fn step_bytes(&self) -> u64 {
        match &self.matrix {
            GemmMatrix::Ternary { w, .. } => (w.tiled_bytes() + 4 * self.rows) as u64,
            GemmMatrix::DenseBf16(_) => (2 * self.rows * self.cols) as u64,
        }
    }
}

/// The stacked matrix decoded on the device to bf16 `w * scale`: its I2 words and row scales
/// uploaded (a quarter of the bf16 bytes), then `i2_to_dense` (the dense GEMM route's decoder).
fn dense_bf16(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    s: &super::tables::Stacked,
    scale: &Dev<f32>,
) -> Result<Dev<u16>> {
    let (rows, cols) = (s.w.rows(), s.w.cols());
    let words = Dev::upload(stream, s.w.words())?;
    let out = Dev::<u16>::zeros(stream, checked_elems("dense weights", rows, cols)?)?;
    // SAFETY: `words` holds the stacked matrix's rows * words_per_row I2 words (valid ternary
    // codes: they came from a TernaryMatrix), `out` rows * cols bf16, `scale` rows f32; all
    // on this GPU's stream, alive until the synchronize below.
    unsafe {
        gpu.i2_to_dense_raw(
            words.ptr,
            out.ptr,
            rows,
            cols,
            Levels::Ternary,
            DType::BF16,
            Some((scale.ptr, true)),
            stream.cu_stream(),
        )
    }?;
    // The words are freed when this returns: wait for the decoder to have read them.
    stream.synchronize()?;
    Ok(out)
}

/// GEMMs that read one normalized input: either one stacked GEMM or, when each layer has its
/// own activation norm, one GEMM per layer (their outputs side by side in the sums buffer).
fn group(
    gpu: &Gpu,
    stream: &Arc<CudaStream>,
    parts: &[&Linear],
    kind: LinearWeights,
) -> Result<Vec<Gemm>> {
    if parts.iter().any(|l| l.norm.is_some()) {
        parts
            .iter()
            .map(|l| Gemm::new(gpu, stream, &[l], kind))
            .collect()
    } else {
        Ok(vec![Gemm::new(gpu, stream, parts, kind)?])
    }
}

pub(crate) struct GpuLayer {
    pub attn_norm: Dev<f32>,
    /// q|k|v.
    pub qkv: Vec<Gemm>,
    pub o: Gemm,
    pub attn_sub_norm: Option<Dev<f32>>,
    pub ffn_norm: Dev<f32>,
    /// gate|up.
    pub gate_up: Vec<Gemm>,
    pub down: Gemm,
    pub ffn_sub_norm: Option<Dev<f32>>,
}

impl GpuLayer {
    fn new(gpu: &Gpu, stream: &Arc<CudaStream>, l: &Layer, kind: LinearWeights) -> Result<Self> {
        let opt = |n: &Option<Vec<f32>>| n.as_deref().map(|n| Dev::upload(stream, n)).transpose();
        Ok(Self {
            attn_norm: Dev::upload(stream, &l.attn_norm)?,
            qkv: group(gpu, stream, &[&l.q, &l.k, &l.v], kind)?,
            o: Gemm::new(gpu, stream, &[&l.o], kind)?,
            attn_sub_norm: opt(&l.attn_sub_norm)?,
            ffn_norm: Dev::upload(stream, &l.ffn_norm)?,
            gate_up: group(gpu, stream, &[&l.gate, &l.up], kind)?,
            down: Gemm::new(gpu, stream, &[&l.down], kind)?,
            ffn_sub_norm: opt(&l.ffn_sub_norm)?,
        })
    }
}

/// An embedding or lm_head matrix `[vocab, hidden]`.
pub(crate) struct Table {
    pub data: Dev<u8>,
    pub dtype: DType,
}

impl Table {
    fn new(stream: &Arc<CudaStream>, m: &DenseMatrix) -> Result<Self> {
        Ok(Self {
            data: Dev::upload(stream, &table_bytes(m)?)?,
            dtype: table_dtype(m)?,
        })
    }
}

pub(crate) struct GpuWeights {
    pub embed: Table,
    /// `None`: tied to the embedding.
    pub head: Option<Table>,
    pub layers: Vec<GpuLayer>,
    pub final_norm: Dev<f32>,
}

/// The table types the weights will be uploaded in: (embedding, untied lm_head).
pub(crate) fn table_dtypes(w: &Weights) -> Result<(DType, Option<DType>)> {
    Ok((
        table_dtype(&w.embed)?,
        w.lm_head.as_ref().map(table_dtype).transpose()?,
    ))
}

impl GpuWeights {
    pub fn upload(
        gpu: &Gpu,
        stream: &Arc<CudaStream>,
        c: &ModelConfig,
        w: &Weights,
        kind: LinearWeights,
    ) -> Result<Self> {
        debug_assert_eq!(w.layers.len(), c.num_layers);
        let layers = w
            .layers
            .iter()
            .map(|l| GpuLayer::new(gpu, stream, l, kind))
            .collect::<Result<_>>()?;
        let weights = Self {
            embed: Table::new(stream, &w.embed)?,
            head: w
                .lm_head
                .as_ref()
                .map(|h| Table::new(stream, h))
                .transpose()?,
            layers,
            final_norm: Dev::upload(stream, &w.final_norm)?,
        };
        stream.synchronize()?;
        Ok(weights)
    }

    /// The lm_head matrix.
    pub fn head(&self) -> &Table {
        self.head.as_ref().unwrap_or(&self.embed)
    }
}
