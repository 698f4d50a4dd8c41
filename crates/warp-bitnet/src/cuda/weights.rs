//! Device-resident 2-bit weights (ternary or INT2) in the T2 tile layout.

use std::sync::{Arc, Mutex};

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, SyncOnDrop};

use super::dense::DenseWeights;
use super::launch::{blocks_of_256, check_ptr, kernel_dtype, kernel_params, launch};
use super::Gpu;
use crate::error::{Error, Result};
use crate::format::{check_dims, check_max_dim, i2, tiled, Levels, PackedWeights, Scale};

/// A 2-bit weight matrix on the GPU: T2 tiles, what their codes stand for, and the
/// weight scale.
pub struct GpuMatrix {
    rows: usize,
    cols: usize,
    levels: Levels,
    tiles: CudaSlice<u32>,
    scale: Option<(CudaSlice<f32>, bool)>,
    /// The dense route's decoded weights, once a large batch has needed them.
    pub(crate) dense: Mutex<Option<DenseWeights>>,
}

impl GpuMatrix {
    /// Output features (M).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features (N).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Ternary or INT2.
    pub fn levels(&self) -> Levels {
        self.levels
    }

    /// Bytes of T2 tiles a GEMM reads (padding included).
    pub fn tiled_bytes(&self) -> usize {
        self.tiles.len() * 4
    }

    /// A device copy (same stream), e.g. to rotate weights in an L2-cold benchmark.
    pub fn try_clone(&self) -> Result<Self> {
        let scale = match &self.scale {
            Some((s, per_row)) => Some((s.try_clone()?, *per_row)),
            None => None,
        };
        Ok(Self {
            rows: self.rows,
            cols: self.cols,
            levels: self.levels,
            tiles: self.tiles.try_clone()?,
            scale,
            dense: Mutex::default(),
        })
    }

    /// The T2 words, copied to the host.
    pub fn download_tiled(&self, stream: &Arc<CudaStream>) -> Result<Vec<u32>> {
        Ok(stream.clone_dtoh(&self.tiles)?)
    }

    /// The stream the weights were uploaded on.
    pub(crate) fn tiles_stream(&self) -> &Arc<CudaStream> {
        self.tiles.stream()
    }

    /// The context the weights live in.
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        self.tiles.context()
    }

    /// Device pointers of the tiles and the scale (with whether it is per row), read
    /// on `stream`: the guards make the buffers wait for `stream` before they are freed.
    pub(crate) fn device_ptrs<'a>(&'a self, stream: &'a CudaStream) -> WeightPtrs<'a> {
        let (tiles, g1) = self.tiles.device_ptr(stream);
        let (scale, g2) = match &self.scale {
            Some((s, per_row)) => {
                let (p, g) = s.device_ptr(stream);
                (Some((p, *per_row)), Some(g))
            }
            None => (None, None),
        };
        WeightPtrs {
            tiles,
            scale,
            _guards: (g1, g2),
        }
    }
}

/// Raw pointers of a [`GpuMatrix`] for one launch, and the guards that order its
/// release after that launch.
pub(crate) struct WeightPtrs<'a> {
    pub tiles: CUdeviceptr,
    pub scale: Option<(CUdeviceptr, bool)>,
    _guards: (SyncOnDrop<'a>, Option<SyncOnDrop<'a>>),
}

impl Gpu {
    /// Uploads a packed matrix (ternary I2 or INT2) and converts it to T2 on the device
    /// (`i2_to_t2`).
    pub fn upload<W: PackedWeights>(&self, m: &W, stream: &Arc<CudaStream>) -> Result<GpuMatrix> {
        let (rows, cols) = (m.rows(), m.cols());
        let words = tiled::len_words(rows, cols);
        let i2_dev = stream.clone_htod(m.words())?;
        // SAFETY: every word is written by i2_to_t2 before any read.
        let mut tiles = unsafe { stream.alloc::<u32>(words) }?;
        {
            let (src, _g1) = i2_dev.device_ptr(stream);
            let (dst, _g2) = tiles.device_ptr_mut(stream);
            // SAFETY: `src` holds the validated I2 words of a rows x cols matrix and
            // `dst` its T2 words, both on `stream`, alive until the guards drop.
            unsafe { self.i2_to_t2_raw(src, dst, rows, cols, W::LEVELS, stream.cu_stream()) }?;
        }
        let scale = match m.scale() {
            Scale::None => None,
            Scale::PerTensor(s) => Some((stream.clone_htod(&[*s])?, false)),
            Scale::PerRow(v) => Some((stream.clone_htod(v)?, true)),
        };
        stream.synchronize()?;
        Ok(GpuMatrix {
            rows,
            cols,
            levels: W::LEVELS,
            tiles,
            scale,
            dense: Mutex::default(),
        })
    }

    /// I2-layout words (ternary I2 or INT2 codes, per `levels`) -> T2 on raw device
    /// pointers, on `stream`: `dst` receives [`tiled::len_words`]`(rows, cols)` words.
    ///
    /// # Safety
    /// `src` must hold `rows * ceil(cols / 16)` words (for ternary, valid I2: a `0b11`
    /// code would read as a zero weight), `dst` that many T2 words, both on this GPU
    /// and alive until the launch completes; `stream` must belong to this GPU's context.
    pub unsafe fn i2_to_t2_raw(
        &self,
        src: CUdeviceptr,
        dst: CUdeviceptr,
        rows: usize,
        cols: usize,
        levels: Levels,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<()> {
        check_dims(rows, cols)?;
        let f = self.function("i2_to_t2")?;
        let (_, k_tiles) = tiled::tile_counts(rows, cols);
        let words = tiled::len_words(rows, cols);
        let blocks = blocks_of_256(words)?;
        let (mut src, mut dst) = (src, dst);
        let (mut r, mut c) = (rows as u32, cols as u32);
        let (mut wpr, mut kt, mut n) =
            (i2::words_per_row(cols) as u32, k_tiles as u32, words as u64);
        let mut int2 = u32::from(levels == Levels::Int2);
        let mut kp = kernel_params!(src, dst, r, c, wpr, kt, n, int2);
        // SAFETY: parameters match i2_to_t2 in layout.cu; the caller guarantees the buffers.
        unsafe { launch(f, (blocks, 1, 1), 256, 0, stream, &mut kp) }
    }

    /// Quantizes float weights to ternary and writes their T2 words in one pass (the
    /// training path): `w` is `[rows, cols]` f32/f16/bf16 with row stride `ldw`,
    /// weight = clamp(round-half-even(w / scale), -1, 1) with `scale` one f32 or, with
    /// `per_row`, `rows` f32 (the formulas of [`quantize_ternary`](crate::quant::quantize_ternary)
    /// given the scale); with `transpose`, `dst` receives the T2 words of `wᵀ`
    /// ([`tiled::len_words`]`(cols, rows)` words), else of `w` (`len_words(rows, cols)`).
    ///
    /// # Safety
    /// The buffers must hold those sizes on this GPU and stay alive until the launch
    /// completes; `stream` must belong to this GPU's context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn quantize_to_t2_raw(
        &self,
        w: CUdeviceptr,
        w_dtype: crate::DType,
        rows: usize,
        cols: usize,
        ldw: usize,
        scale: CUdeviceptr,
        per_row: bool,
        transpose: bool,
        dst: CUdeviceptr,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<()> {
        use crate::DType;
        check_dims(rows, cols)?;
        check_max_dim(&[("ldw", ldw)])?;
        if ldw < cols {
            return Err(Error::ShapeMismatch {
                arg: "ldw",
                expected: format!(">= {cols}"),
                got: ldw.to_string(),
            });
        }
        let mut dtype = kernel_dtype(w_dtype, &[DType::F32, DType::F16, DType::BF16], "weights")?;
        check_ptr("w", w, w_dtype.size())?;
        check_ptr("scale", scale, 4)?;
        check_ptr("dst", dst, 4)?;
        let (t_rows, t_cols) = if transpose {
            (cols, rows)
        } else {
            (rows, cols)
        };
        let (_, k_tiles) = tiled::tile_counts(t_rows, t_cols);
        let words = tiled::len_words(t_rows, t_cols);
        let blocks = blocks_of_256(words)?;
        let f = self.function("quantize_to_t2")?;
        let (mut w, mut scale, mut dst) = (w, scale, dst);
        let (mut ldw, mut per_row, mut transpose) = (ldw as u32, per_row as u32, transpose as u32);
        let (mut tr, mut tc, mut kt, mut n) =
            (t_rows as u32, t_cols as u32, k_tiles as u32, words as u64);
        let mut kp = kernel_params!(w, dtype, ldw, scale, per_row, transpose, dst, tr, tc, kt, n);
        // SAFETY: parameters match quantize_to_t2 in layout.cu; the caller guarantees the buffers.
        unsafe { launch(f, (blocks, 1, 1), 256, 0, stream, &mut kp) }
    }

    /// I2-layout words -> a dense row-major `[rows, cols]` matrix on raw device pointers
    /// (for large batches, where a dense tensor-core GEMM is faster): `out` i8 holds the
    /// ternary weights, or twice the INT2 levels (`2c - 3`); f16 / bf16 hold the weights
    /// or levels themselves, times `scale` when given (float32 `[1]`, or `[rows]` with
    /// `true`; the product rounded once to `out`, as a dense model holds its weights).
    ///
    /// # Safety
    /// `src` must hold `rows * ceil(cols / 16)` words (valid I2 codes for ternary), `dst`
    /// `rows * cols` elements of `out`, `scale` 1 or `rows` floats, all on this GPU and
    /// alive until the launch completes; `stream` must belong to this GPU's context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn i2_to_dense_raw(
        &self,
        src: CUdeviceptr,
        dst: CUdeviceptr,
        rows: usize,
        cols: usize,
        levels: Levels,
        out: crate::DType,
        scale: Option<(CUdeviceptr, bool)>,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<()> {
        use crate::DType;
        check_dims(rows, cols)?;
        let mut code = kernel_dtype(out, &[DType::I8, DType::F16, DType::BF16], "dense weights")?;
        check_ptr("src", src, 4)?;
        check_ptr("dst", dst, out.size())?;
        if let Some((s, _)) = scale {
            if code == 0 {
                return Err(Error::Unsupported {
                    what: "argument",
                    detail: "`scale`: int8 dense weights hold the levels; scale the int32 sums"
                        .into(),
                });
            }
            check_ptr("scale", s, 4)?;
        }
        let wpr = i2::words_per_row(cols);
        // One thread per word (int8) or per half word (16-bit values): 16 bytes each.
        let threads = rows * wpr * if code == 0 { 1 } else { 2 };
        let blocks = blocks_of_256(threads)?;
        let f = self.function("i2_to_dense")?;
        let (mut src, mut dst) = (src, dst);
        let (mut r, mut c, mut wp) = (rows as u32, cols as u32, wpr as u32);
        let mut int2 = u32::from(levels == Levels::Int2);
        let (mut sp, mut per_row) = scale.map_or((0, 0), |(p, per_row)| (p, u32::from(per_row)));
        let mut kp = kernel_params!(src, dst, r, c, wp, int2, code, sp, per_row);
        // SAFETY: parameters match i2_to_dense in layout.cu; the caller guarantees the buffers.
        unsafe { launch(f, (blocks, 1, 1), 256, 0, stream, &mut kp) }
    }

    /// Converts the device tiles back to I2-layout words (`t2_to_i2`: I2 codes for
    /// ternary, the INT2 codes for INT2) and copies them to the host.
    pub fn download_i2(&self, w: &GpuMatrix, stream: &Arc<CudaStream>) -> Result<Vec<u32>> {
        let wpr = i2::words_per_row(w.cols);
        let n = w.rows * wpr;
        // SAFETY: every word is written by t2_to_i2 before the copy back.
        let mut out = unsafe { stream.alloc::<u32>(n) }?;
        {
            let f = self.function("t2_to_i2")?;
            let (mut src, _g1) = w.tiles.device_ptr(stream);
            let (mut dst, _g2) = out.device_ptr_mut(stream);
            let (_, k_tiles) = tiled::tile_counts(w.rows, w.cols);
            let (mut r, mut c, mut wp, mut kt) =
                (w.rows as u32, w.cols as u32, wpr as u32, k_tiles as u32);
            let mut int2 = u32::from(w.levels == Levels::Int2);
            let mut kp = kernel_params!(src, dst, r, c, wp, kt, int2);
            let blocks = blocks_of_256(n)?;
            // SAFETY: parameters match t2_to_i2 in layout.cu; buffers hold the sizes it indexes.
            unsafe { launch(f, (blocks, 1, 1), 256, 0, stream.cu_stream(), &mut kp) }?;
        }
        Ok(stream.clone_dtoh(&out)?)
    }
}
