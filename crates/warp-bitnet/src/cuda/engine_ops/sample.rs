//! Launchers of the sampling kernels (engine.cu `sample_f32`, `history_mark`): the algorithm
//! of `engine/sampler/pick.rs` on the device, one CTA per logit row.

use cudarc::driver::sys::{CUdeviceptr, CUstream};

use super::{check_ptr, kernel_params, launch, ld_error, nonzero, row_shape, u32_arg, Gpu};
use crate::engine::Draw;
use crate::error::Result;

/// Threads of `sample_f32` (`SAMPLE_THREADS` in engine.cu).
pub(crate) const SAMPLE_THREADS: u32 = 1024;
/// Threads per CTA of `history_mark`.
const MARK_THREADS: u32 = 256;

/// One row's draw (engine.cu `SampleRow`): a [`Draw`] and the slot whose history bitmap its
/// penalty reads.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct SampleRow {
    pub seed: u64,
    pub stream: u64,
    pub step: u64,
    pub temperature: f32,
    pub penalty: f32,
    pub top_k: u32,
    pub top_p24: u32,
    pub slot: u32,
    pub pad: u32,
}
const _: () = assert!(std::mem::size_of::<SampleRow>() == 48);

// SAFETY: plain old data (integers and floats, no padding beyond `pad`), as the kernel reads it.
unsafe impl cudarc::driver::DeviceRepr for SampleRow {}

impl SampleRow {
    pub fn new(d: &Draw, slot: u32) -> Self {
        Self {
            seed: d.seed,
            stream: d.stream,
            step: d.step,
            temperature: d.temperature,
            penalty: d.penalty,
            top_k: d.top_k,
            top_p24: d.top_p24,
            slot,
            pad: 0,
        }
    }
}

/// u32 words of one slot's history bitmap for a vocabulary of `n`.
pub(crate) fn history_words(n: usize) -> usize {
    n.div_ceil(32)
}

impl Gpu {
    /// `out[r]` = the token drawn from row `r` of `logits` (`rows` rows of `n`, `ld` apart)
    /// with `params[r]` (`engine/sampler/pick.rs`'s algorithm, the same token as the CPU's);
    /// the penalty reads bitmap `params[r].slot` of `history` (`words` u32 each; 0 = no
    /// history, no penalty).
    ///
    /// # Safety
    /// `logits` must hold `rows * ld` f32, `params` `rows` [`SampleRow`]s whose slots index
    /// `history`'s bitmaps (`words >= ceil(n / 32)` u32 each) when it is non-zero, `out` `rows`
    /// u32, all on this GPU and alive until the launch completes; `stream` must belong to it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn sample_raw(
        &self,
        logits: CUdeviceptr,
        rows: usize,
        n: usize,
        ld: usize,
        params: CUdeviceptr,
        (history, words): (CUdeviceptr, usize),
        out: CUdeviceptr,
        stream: CUstream,
    ) -> Result<()> {
        nonzero("n", n)?;
        if ld < n {
            return Err(ld_error("ld", n, ld));
        }
        if history != 0 {
            check_ptr("history", history, 4)?;
            if words < history_words(n) {
                return Err(ld_error("words", history_words(n), words));
            }
        }
        check_ptr("logits", logits, 4)?;
        check_ptr("params", params, 8)?;
        check_ptr("out", out, 4)?;
        let shape = row_shape(rows, SAMPLE_THREADS, 0, 0)?;
        let (mut lp, mut n32, mut ld32, mut pp, mut hp, mut w32, mut op) = (
            logits,
            u32_arg("n", n)?,
            u32_arg("ld", ld)?,
            params,
            history,
            u32_arg("words", words)?,
            out,
        );
        let mut kp = kernel_params!(lp, n32, ld32, pp, hp, w32, op);
        // SAFETY: parameters match sample_f32; the caller guarantees the buffers.
        unsafe {
            launch(
                self.function("sample_f32")?,
                shape.grid,
                shape.block,
                0,
                stream,
                &mut kp,
            )
        }
    }

    /// Sets bit `tok[t]` of slot `slot[t]`'s bitmap in `history` (`words` u32 per slot) for each
    /// of `tokens` tokens: the pass's tokens join their slots' repetition histories.
    ///
    /// # Safety
    /// `tok` and `slot` must hold `tokens` u32, every `tok[t] < 32 * words` and `slot[t]` a
    /// bitmap of `history`, all on this GPU and alive until the launch completes; `stream` must
    /// belong to it.
    pub(crate) unsafe fn history_mark_raw(
        &self,
        (tok, slot, tokens): (CUdeviceptr, CUdeviceptr, usize),
        history: CUdeviceptr,
        words: usize,
        stream: CUstream,
    ) -> Result<()> {
        nonzero("tokens", tokens)?;
        for (arg, ptr) in [("tok", tok), ("slot", slot), ("history", history)] {
            check_ptr(arg, ptr, 4)?;
        }
        let blocks = tokens.div_ceil(MARK_THREADS as usize);
        let (mut tp, mut sp, mut n32, mut hp, mut w32) = (
            tok,
            slot,
            u32_arg("tokens", tokens)?,
            history,
            u32_arg("words", words)?,
        );
        let mut kp = kernel_params!(tp, sp, n32, hp, w32);
        // SAFETY: parameters match history_mark; the caller guarantees the buffers.
        unsafe {
            launch(
                self.function("history_mark")?,
                (u32_arg("tokens", blocks)?, 1, 1),
                MARK_THREADS,
                0,
                stream,
                &mut kp,
            )
        }
    }
}
