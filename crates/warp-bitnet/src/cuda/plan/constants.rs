//! The numbers the planner and the kernels share, in one list, with Rust as the source of
//! truth. [`header`] writes them as `#define`s into `constants.cuh`, a header that exists only
//! at run time: `compile` hands it to NVRTC beside the embedded ones, and common.cuh includes
//! it, so no kernel file spells these numbers. What the kernels derive from them (shared memory
//! layouts, warps per CTA) the planner computes again; [`layout_checks`] appends a
//! `static_assert` per instantiated shape to the GEMM family comparing the two, so a formula
//! that drifts on either side fails to compile (the NVRTC test in compile.rs).

use super::prefill::{
    prefill_smem, prefill_stage, PREFILL_MMA_MAX_STAGES, PREFILL_ROWS, PREFILL_STAGES_16,
    PREFILL_STAGES_I8, PREFILL_THREADS, PREFILL_TOKENS, PREPASS_THREADS,
};
use super::split::{split_fixed_smem, split_warps, SPLIT_DEPTH, SPLIT_TOKENS};
use super::{
    gemm_fixed_smem, row_tile_options, tokens_per_cta_options, GEMM_DEPTH, GEMM_DEPTH_SINGLE,
    GEMM_WARPS, TILE_BYTES,
};
use crate::cuda::quant::QUANT_THREADS;
use crate::dtype::DType;
use crate::format::tiled::{TILE_COLS, TILE_ROWS};
use crate::quant::ACT_EPS;

/// The shared integers: the kernels' name (`WB_` and the Rust name) and value. The T2 tile
/// (16 rows x 128 columns) comes first: common.cuh derives its bytes and words from it and
/// asserts the shape its thread mappings are built on.
pub(crate) const INTEGERS: &[(&str, usize)] = &[
    ("WB_TILE_ROWS", TILE_ROWS),
    ("WB_TILE_COLS", TILE_COLS),
    ("WB_GEMM_WARPS", GEMM_WARPS),
    ("WB_GEMM_DEPTH_SINGLE", GEMM_DEPTH_SINGLE),
    ("WB_GEMM_DEPTH", GEMM_DEPTH),
    ("WB_SPLIT_DEPTH", SPLIT_DEPTH),
    ("WB_PREFILL_TOKENS", PREFILL_TOKENS),
    ("WB_PREFILL_ROW_TILES", PREFILL_ROWS / TILE_ROWS),
    ("WB_PREFILL_THREADS", PREFILL_THREADS as usize),
    ("WB_PREFILL_STAGES_I8", PREFILL_STAGES_I8),
    ("WB_PREFILL_STAGES_16", PREFILL_STAGES_16),
    ("WB_PREFILL_MMA_MAX_STAGES", PREFILL_MMA_MAX_STAGES),
    ("WB_PREPASS_THREADS", PREPASS_THREADS as usize),
    ("WB_QUANT_THREADS", QUANT_THREADS as usize),
];

/// The text of `constants.cuh`.
pub(crate) fn header() -> String {
    let mut text = String::from(
        "// Generated at run time by src/cuda/plan/constants.rs (the planner's values): do not edit.\n\
         #pragma once\n",
    );
    for (name, value) in INTEGERS {
        text += &format!("#define {name} {value}\n");
    }
    // `{:?}` prints the shortest decimal that reads back as the same f32.
    text += &format!("#define WB_ACT_EPS {ACT_EPS:?}f\n");
    text
}

/// `static_assert`s that the GEMM family's shared-memory layouts and warp counts are the
/// planner's, for every instantiated shape (appended to the family's source).
pub(crate) fn layout_checks() -> String {
    let mut lines = Vec::new();
    let mut check = |kernel: String, rust: usize, planner: &str| {
        lines.push(format!(
            "static_assert({kernel} == {rust}, \"{kernel} != {planner} (src/cuda/plan)\");"
        ));
    };
    check("TILE_WEIGHT_BYTES".into(), TILE_BYTES, "TILE_BYTES");
    let mut gemm_shapes = vec![(1, 1)];
    for x in [DType::F16, DType::I8] {
        for &tokens in tokens_per_cta_options(x) {
            for &rt in row_tile_options(x, tokens) {
                gemm_shapes.push((tokens, rt));
            }
        }
    }
    gemm_shapes.sort();
    gemm_shapes.dedup();
    for (tokens, rt) in gemm_shapes {
        let (nt, one) = (tokens.max(8) / 8, tokens == 1);
        let kernel = format!("GemmSmem<{nt}, {rt}, DEPTH_OF<{one}>>::FIXED");
        check(kernel, gemm_fixed_smem(tokens, rt), "gemm_fixed_smem");
    }
    for tokens in SPLIT_TOKENS {
        for wg in [false, true] {
            let (nt, (warps, rw)) = (tokens / 8, split_warps(tokens, wg));
            let smem = format!("SplitSmem<{nt}, {wg}>::FIXED");
            check(smem, split_fixed_smem(tokens, wg), "split_fixed_smem");
            check(format!("SPLIT_WARPS<{nt}, {wg}>"), warps, "split_warps");
            check(format!("SPLIT_RW<{nt}, {wg}>"), rw, "split_warps");
        }
    }
    for (act, x) in [("ACT_F16", DType::F16), ("ACT_I8", DType::I8)] {
        check(
            format!("PrefillX<{act}>::SMEM"),
            prefill_smem(x),
            "prefill_smem",
        );
        check(
            format!("PrefillMma<{act}>::STAGE"),
            prefill_stage(x),
            "prefill_stage",
        );
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::compile;

    /// Every `WB_` name a kernel source uses is defined by the generated header, and every
    /// one the header defines is used: the list and the kernels cannot drift apart unseen
    /// even where NVRTC is absent.
    #[test]
    fn the_kernels_use_exactly_the_listed_constants() {
        let header = header();
        let defined: Vec<&str> = header
            .lines()
            .filter_map(|l| l.strip_prefix("#define "))
            .map(|l| l.split(' ').next().unwrap_or(""))
            .collect();
        let mut used = Vec::new();
        for text in compile::embedded_texts() {
            for (i, _) in text.match_indices("WB_") {
                let name: String = text[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                used.push(name);
            }
        }
        used.sort();
        used.dedup();
        let mut want: Vec<String> = defined.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(used, want);
        assert!(header.contains("#define WB_GEMM_WARPS 8\n"));
        assert!(header.contains("#define WB_TILE_ROWS 16\n#define WB_TILE_COLS 128\n"));
        assert!(header.contains("#define WB_ACT_EPS 1e-5f\n"));
    }

    #[test]
    fn checks_cover_every_family() {
        let checks = layout_checks();
        for needle in [
            "TILE_WEIGHT_BYTES == 512,",
            "GemmSmem<1, 1, DEPTH_OF<true>>::FIXED == ",
            "GemmSmem<4, 2, DEPTH_OF<false>>::FIXED == ",
            "SplitSmem<8, true>::FIXED == ",
            "PrefillX<ACT_I8>::SMEM == ",
            "PrefillMma<ACT_F16>::STAGE == ",
        ] {
            assert!(checks.contains(needle), "{needle}");
        }
    }
}
