//! The one list of GEMM kernels: every kernel the planner can pick, as the macro lines
//! that instantiate it. NVRTC compiles at run time, so `compile` appends these lines to
//! `kernels/gemm.cu` for each level codec instead of keeping a written-out list per file.

use super::{gemm_symbol, row_tile_options, tokens_per_cta_options, Cta, Staging, SPLIT_TOKENS};
use crate::dtype::DType;
use crate::format::Levels;

/// The (activation, output) type pairs of the GEMM kernels.
pub(crate) const TYPE_PAIRS: [(DType, DType); 5] = [
    (DType::F16, DType::F16),
    (DType::BF16, DType::BF16),
    (DType::I8, DType::F16),
    (DType::I8, DType::BF16),
    (DType::I8, DType::I32),
];

/// The kernels' name for an activation type (common.cuh).
fn act(x: DType) -> &'static str {
    match x {
        DType::F16 => "ACT_F16",
        DType::BF16 => "ACT_BF16",
        _ => "ACT_I8",
    }
}

/// The kernels' name for an output type (common.cuh).
fn out(y: DType) -> &'static str {
    match y {
        DType::F16 => "OUT_F16",
        DType::BF16 => "OUT_BF16",
        _ => "OUT_I32",
    }
}

/// CTAs per SM a token-group kernel's `__launch_bounds__` asks for: 4 for one token or 8
/// tokens x 1 row tile, halving as the CTA's tile doubles (register budgets of
/// docs/NOTES.md, v16-v19).
fn min_ctas(tokens: usize, row_tiles: usize) -> usize {
    (32 / (tokens.max(8) * row_tiles)).clamp(1, 4)
}

/// The instantiation lines of every GEMM kernel of `levels`, one per line.
pub(crate) fn gemm_instances(levels: Levels) -> String {
    let int2 = levels == Levels::Int2;
    let mut lines = Vec::new();
    let mut add = |line: String| lines.push(line);
    for (x, y) in TYPE_PAIRS {
        let (a, o) = (act(x), out(y));
        let name = |staging, cta| gemm_symbol(levels, x, staging, y, cta);
        let single = name(Staging::AsIs, Cta::Single);
        add(format!(
            "GEMM_KERNEL({a}, {o}, 1, 1, true, {int2}, 4, {single})"
        ));
        if x != DType::I8 {
            // One token quantized to int8 in the kernel (W2A8 in one launch).
            let q = name(Staging::Quantized, Cta::Single);
            let qx = if x == DType::F16 { "QX_F16" } else { "QX_BF16" };
            add(format!("GEMM_KERNEL_QX(ACT_I8, {qx}, {o}, {int2}, 4, {q})"));
        }
        if x == DType::BF16 {
            // One bf16 token staged as f16 for the cheaper decode.
            let h = name(Staging::AsF16, Cta::Single);
            add(format!(
                "GEMM_KERNEL_QX(ACT_F16, QX_BF16, {o}, {int2}, 4, {h})"
            ));
        }
        for &tokens in tokens_per_cta_options(x) {
            for &row_tiles in row_tile_options(x, tokens) {
                let n = name(Staging::AsIs, Cta::Groups { tokens, row_tiles });
                let (nt, m) = (tokens / 8, min_ctas(tokens, row_tiles));
                add(format!(
                    "GEMM_KERNEL({a}, {o}, {nt}, {row_tiles}, false, {int2}, {m}, {n})"
                ));
            }
        }
        for wgmma in [false, true] {
            for tokens in SPLIT_TOKENS {
                let n = name(Staging::AsIs, Cta::Split { tokens, wgmma });
                let nt = tokens / 8;
                add(format!(
                    "GEMM_SPLIT_KERNEL({a}, {o}, {nt}, {int2}, {wgmma}, {n})"
                ));
            }
        }
        for split_k in [false, true] {
            let n = name(
                Staging::AsIs,
                Cta::Prefill {
                    wgmma: true,
                    split_k,
                },
            );
            add(format!(
                "GEMM_PREFILL_KERNEL({a}, {o}, {int2}, {split_k}, {n})"
            ));
        }
        let n = name(
            Staging::AsIs,
            Cta::Prefill {
                wgmma: false,
                split_k: false,
            },
        );
        add(format!("GEMM_PREFILL_MMA_KERNEL({a}, {o}, {int2}, {n})"));
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated list instantiates exactly what the written-out lists of gemm_t2.cu and
    /// gemm_int2.cu did (commit 5b4ccf1), in another order.
    #[test]
    fn same_kernels_as_the_written_out_lists() {
        let mut t2: Vec<_> = gemm_instances(Levels::Ternary)
            .lines()
            .map(String::from)
            .collect();
        t2.sort();
        assert_eq!(t2.len(), 70);
        assert!(t2.contains(
            &"GEMM_KERNEL(ACT_F16, OUT_F16, 1, 2, false, false, 2, gemm_t2_f16_f16_n8_r2)"
                .to_string()
        ));
        assert!(t2.contains(
            &"GEMM_KERNEL(ACT_I8, OUT_BF16, 1, 1, false, false, 4, gemm_t2_i8_bf16_n8_r1)"
                .to_string()
        ));
        assert!(t2.contains(
            &"GEMM_KERNEL(ACT_I8, OUT_I32, 4, 2, false, false, 1, gemm_t2_i8_i32_n32_r2)"
                .to_string()
        ));
        assert!(t2.contains(
            &"GEMM_KERNEL_QX(ACT_F16, QX_BF16, OUT_BF16, false, 4, gemm_t2_bf16h_bf16_n1)"
                .to_string()
        ));
        assert!(t2.contains(
            &"GEMM_SPLIT_KERNEL(ACT_I8, OUT_I32, 8, false, true, gemm_t2_i8_i32_w64)".to_string()
        ));
        assert!(t2.contains(
            &"GEMM_PREFILL_KERNEL(ACT_BF16, OUT_BF16, false, true, gemm_t2_bf16_bf16_p128k)"
                .to_string()
        ));
        let int2 = gemm_instances(Levels::Int2);
        assert!(int2.contains(
            "GEMM_KERNEL(ACT_F16, OUT_F16, 2, 8, false, true, 1, gemm_int2_f16_f16_n16_r8)"
        ));
        assert!(
            int2.contains("GEMM_PREFILL_MMA_KERNEL(ACT_I8, OUT_I32, true, gemm_int2_i8_i32_m128)")
        );
    }
}
