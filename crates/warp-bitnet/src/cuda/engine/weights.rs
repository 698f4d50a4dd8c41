//! The model's weights on the device: every linear layer's T2 tiles with per-row scales (q|k|v
//! and gate|up stacked into one GEMM each unless every layer normalizes its own input), f32
//! norms, and the embedding / lm_head tables in the narrowest exact type (`tables::table_dtype`).

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, DeviceRepr, ValidAsZeroBits};

use super::tables::{stack, table_bytes, table_dtype};
use crate::cpu::dense::DenseMatrix;
use crate::cuda::{Gpu, GpuMatrix};
use crate::dtype::DType;
use crate::engine::config::ModelConfig;
use crate::engine::weights::{Layer, Linear, Weights};
use crate::error::Result;

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

/// One GEMM: one linear layer, or several stacked.
pub(crate) struct Gemm {
    pub w: GpuMatrix,
    /// The T2 tiles' address.
    pub tiles: CUdeviceptr,
    /// `[rows]` weight scale.
    pub scale: Dev<f32>,
    /// `[rows]` bias.
    pub bias: Option<Dev<f32>>,
    /// `[cols]` the layer's own activation RMSNorm (`use_rms_norm`; never stacked).
    pub norm: Option<Dev<f32>>,
}

impl Gemm {
    fn new(gpu: &Gpu, stream: &Arc<CudaStream>, parts: &[&Linear]) -> Result<Self> {
        let s = stack(parts)?;
        let w = gpu.upload(&s.w, stream)?;
        let tiles = w.device_ptrs(stream).tiles;
        let norm = match parts {
            [one] => one
                .norm
                .as_deref()
                .map(|n| Dev::upload(stream, n))
                .transpose()?,
            _ => None,
        };
        Ok(Self {
            w,
            tiles,
            scale: Dev::upload(stream, &s.scale)?,
            bias: s.bias.map(|b| Dev::upload(stream, &b)).transpose()?,
            norm,
        })
    }

    pub fn rows(&self) -> usize {
        self.w.rows()
    }

    pub fn cols(&self) -> usize {
        self.w.cols()
    }
}

/// GEMMs that read one normalized input: either one stacked GEMM or, when each layer has its
/// own activation norm, one GEMM per layer (their outputs side by side in the sums buffer).
fn group(gpu: &Gpu, stream: &Arc<CudaStream>, parts: &[&Linear]) -> Result<Vec<Gemm>> {
    if parts.iter().any(|l| l.norm.is_some()) {
        parts.iter().map(|l| Gemm::new(gpu, stream, &[l])).collect()
    } else {
        Ok(vec![Gemm::new(gpu, stream, parts)?])
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
    fn new(gpu: &Gpu, stream: &Arc<CudaStream>, l: &Layer) -> Result<Self> {
        let opt = |n: &Option<Vec<f32>>| n.as_deref().map(|n| Dev::upload(stream, n)).transpose();
        Ok(Self {
            attn_norm: Dev::upload(stream, &l.attn_norm)?,
            qkv: group(gpu, stream, &[&l.q, &l.k, &l.v])?,
            o: Gemm::new(gpu, stream, &[&l.o])?,
            attn_sub_norm: opt(&l.attn_sub_norm)?,
            ffn_norm: Dev::upload(stream, &l.ffn_norm)?,
            gate_up: group(gpu, stream, &[&l.gate, &l.up])?,
            down: Gemm::new(gpu, stream, &[&l.down])?,
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
    ) -> Result<Self> {
        debug_assert_eq!(w.layers.len(), c.num_layers);
        let layers = w
            .layers
            .iter()
            .map(|l| GpuLayer::new(gpu, stream, l))
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
