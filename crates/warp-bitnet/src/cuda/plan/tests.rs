use super::prefill::{prefill_smem, PREFILL_PARTIAL};
use super::split::split_fixed_smem;
use super::*;

/// 132 SMs with two resident CTAs each, 200 KB of dynamic shared memory per CTA (unless
/// `max_dynamic` says otherwise);
/// with `clusters`, an sm_90 that fits one cluster CTA per SM (16 clusters of 8),
/// taking the split kernels as `split` says.
struct FakeGpu {
    clusters: bool,
    split: SplitKernels,
    wgmma: bool,
    prefill: bool,
    max_dynamic: usize,
}
impl Occupancy for FakeGpu {
    fn resident(&self, _: &str, _: usize) -> Result<usize> {
        Ok(264)
    }
    fn max_dynamic(&self, _: &str) -> Result<usize> {
        Ok(self.max_dynamic)
    }
    fn sm_count(&self) -> usize {
        132
    }
    fn clusters(&self, _: &str, _: usize, size: usize) -> Result<usize> {
        Ok(if self.clusters { 132 / size } else { 0 })
    }
    fn split_kernels(&self) -> SplitKernels {
        self.split
    }
    fn wgmma(&self) -> bool {
        self.wgmma
    }
    fn prefill(&self) -> bool {
        self.prefill
    }
}
/// A GPU with thread-block clusters.
const fn sm90(split: SplitKernels, wgmma: bool) -> FakeGpu {
    FakeGpu {
        clusters: true,
        split,
        wgmma,
        prefill: false,
        max_dynamic: 200 << 10,
    }
}
const GPU: &FakeGpu = &FakeGpu {
    clusters: false,
    split: SplitKernels::Auto,
    wgmma: false,
    prefill: false,
    max_dynamic: 200 << 10,
};
const SM90: &FakeGpu = &sm90(SplitKernels::Always, false);
const SM90_AUTO: &FakeGpu = &sm90(SplitKernels::Auto, false);
const SM90A: &FakeGpu = &sm90(SplitKernels::Always, true);
const SM90A_AUTO: &FakeGpu = &sm90(SplitKernels::Auto, true);
/// An H100's shared memory, which the prefill kernel needs.
const SM90A_PREFILL: &FakeGpu = &FakeGpu {
    prefill: true,
    max_dynamic: 227 << 10,
    ..sm90(SplitKernels::Auto, true)
};

fn args(x_dtype: DType, y_dtype: DType, batch: usize) -> GemmArgs {
    GemmArgs {
        x: 0x1000,
        x_dtype,
        ldx: 300,
        y: 0x2000,
        y_dtype,
        ldy: 100,
        batch,
        bias: None,
        x_scale: (x_dtype == DType::I8).then_some(0x3000),
        quantize_x: false,
    }
}

#[test]
fn picks_the_smallest_token_group_and_the_grid() {
    // A 100 x 300 ternary matrix without scale.
    let plan = |a: GemmArgs| plan_gemm(100, 300, Levels::Ternary, 0x10, None, &a, GPU).unwrap();
    let p = plan_gemm(
        100,
        300,
        Levels::Ternary,
        0x10,
        Some((0x20, true)),
        &args(DType::F16, DType::F16, 1),
        GPU,
    )
    .unwrap();
    assert_eq!(p.symbol, "gemm_t2_f16_f16_n1");
    assert_eq!(p.grid, (7, 1, 1)); // ceil(100 / 16) row tiles, fewer than the resident CTAs
    assert_eq!((p.params.k_tiles, p.params.scale_per_row), (3, 1));
    assert_eq!(p.params.x_vec, 0); // 300 * 2 bytes is not a multiple of 16
    let tall = GemmArgs {
        ldy: 10_000,
        ..args(DType::F16, DType::F16, 1)
    };
    let p = plan_gemm(10_000, 300, Levels::Ternary, 0x10, None, &tall, GPU).unwrap();
    // Persistent: 625 row tiles over the 264 resident CTAs.
    assert_eq!(p.grid, (264, 1, 1));
    let p = plan(args(DType::I8, DType::I32, 70));
    assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_i8_i32_n32_r2", 3));
    // f16/bf16 stop at 16 tokens per CTA.
    let p = plan(args(DType::F16, DType::F16, 40));
    assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_f16_f16_n16_r4", 3));
    let p = plan(args(DType::BF16, DType::BF16, 9));
    assert_eq!(p.symbol, "gemm_t2_bf16_bf16_n16_r4");
    let p = plan(args(DType::F16, DType::F16, 2));
    assert_eq!(p.symbol, "gemm_t2_f16_f16_n8_r2");
    // One bf16 token: staged as f16 from 512 weight tiles per SM (132 SMs) on.
    for (row_tiles, symbol) in [
        (1, "gemm_t2_bf16_bf16_n1"),
        (1055, "gemm_t2_bf16_bf16_n1"),
        (1056, "gemm_t2_bf16h_bf16_n1"),
    ] {
        let (rows, cols) = (16 * row_tiles, 64 * 128);
        let a = GemmArgs {
            ldx: cols,
            ldy: rows,
            ..args(DType::BF16, DType::BF16, 1)
        };
        let p = plan_gemm(rows, cols, Levels::Ternary, 0x10, None, &a, GPU).unwrap();
        assert_eq!(p.symbol, symbol, "{row_tiles} row tiles");
    }
    let p = plan(args(DType::I8, DType::BF16, 1));
    let staged_row = 3 * 128;
    assert_eq!(
        (p.symbol.as_str(), p.smem as usize),
        ("gemm_t2_i8_bf16_n1", gemm_fixed_smem(1, 1) + staged_row)
    );
    // A row longer than the shared memory the single-token kernel may take (200 KB).
    let wide = GemmArgs {
        ldx: 1 << 17,
        ..args(DType::F16, DType::F16, 1)
    };
    let p = plan_gemm(100, 1 << 17, Levels::Ternary, 0x10, None, &wide, GPU).unwrap();
    assert_eq!(
        (p.symbol.as_str(), p.smem as usize),
        ("gemm_t2_f16_f16_n8_r2", gemm_fixed_smem(8, 2))
    );
    // Token-group kernels take several row tiles per CTA: the most whose blocks fill
    // the 264 resident CTAs. 625 row tiles: 79 blocks of 8 would not, 157 of 4 are the
    // fewest on offer.
    let tall = |rows: usize, batch: usize| {
        let a = GemmArgs {
            ldy: rows,
            ..args(DType::F16, DType::F16, batch)
        };
        let p = plan_gemm(rows, 300, Levels::Ternary, 0x10, None, &a, GPU).unwrap();
        (p.symbol, p.grid)
    };
    let r4 = "gemm_t2_f16_f16_n16_r4".to_string();
    let r8 = "gemm_t2_f16_f16_n16_r8".to_string();
    assert_eq!(tall(10_000, 16), (r4, (157, 1, 1)));
    // 4 token groups x 79 blocks of 8 fill them; so do 2500 blocks of 8 for one group.
    assert_eq!(tall(10_000, 64), (r8.clone(), (66, 4, 1)));
    assert_eq!(tall(320_000, 16), (r8, (264, 1, 1)));
}

#[test]
fn split_kernels_take_nine_tokens_and_more_on_sm90() {
    let plan = |rows: usize, cols: usize, x: DType, y: DType, batch: usize, gpu: &FakeGpu| {
        let a = GemmArgs {
            ldx: cols,
            ldy: rows,
            ..args(x, y, batch)
        };
        plan_gemm(rows, cols, Levels::Ternary, 0x10, None, &a, gpu).unwrap()
    };
    // 28672 x 8192, 16 tokens: 16 warps per CTA, 56 blocks of 16 row pairs, 64 k tiles.
    // Two slices of 32 would stage 16 x 32 x 256 bytes, more than fits next to the
    // rings and partial sums; 4 slices of 16: 33 clusters, 2 rounds, cost 2 x (16 + 1)
    // (8 slices: 16 clusters, 4 x (8 + 1)).
    let p = plan(28_672, 8192, DType::F16, DType::F16, 16, SM90);
    assert_eq!(p.symbol, "gemm_t2_f16_f16_s16");
    assert_eq!((p.grid, p.cluster, p.threads), ((132, 1, 1), 4, 512));
    assert_eq!(
        p.smem as usize,
        split_fixed_smem(16, false) + 16 * (16 * 256 + 32)
    );
    // 8192 x 8192, 64 tokens: no slice of 64 f16 tokens fits 200 KB; 2 groups of 32
    // in 8 slices (8 clusters each, 2 rounds).
    let p = plan(8192, 8192, DType::F16, DType::F16, 64, SM90);
    assert_eq!(p.symbol, "gemm_t2_f16_f16_s32");
    assert_eq!((p.grid, p.cluster), ((64, 2, 1), 8));
    // int8 rows are half as wide: 64 tokens fit.
    let p = plan(8192, 8192, DType::I8, DType::BF16, 64, SM90);
    assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_i8_bf16_s64", 1));
    // 9 and 33 tokens: the smallest CTA that holds them.
    assert_eq!(
        plan(300, 300, DType::BF16, DType::BF16, 9, SM90).symbol,
        "gemm_t2_bf16_bf16_s16"
    );
    assert_eq!(
        plan(300, 300, DType::I8, DType::I32, 33, SM90).symbol,
        "gemm_t2_i8_i32_s64"
    );
    // 8 tokens, and any batch before sm_90: the token-group kernels.
    assert_eq!(
        plan(300, 300, DType::F16, DType::F16, 8, SM90).symbol,
        "gemm_t2_f16_f16_n8_r2"
    );
    let p = plan(28_672, 8192, DType::F16, DType::F16, 16, GPU);
    assert_eq!(
        (p.symbol.as_str(), p.cluster),
        ("gemm_t2_f16_f16_n16_r4", 0)
    );
    // Rows too long for any slice of 8: the token-group kernel.
    let p = plan(100, 1 << 20, DType::F16, DType::F16, 16, SM90);
    assert_eq!(p.symbol, "gemm_t2_f16_f16_n16_r4");
    // Auto: 28672 x 8192 with 16 int8 tokens, 2 slices of 32 k tiles, fills
    // 896 x 64 / ((32 + 1) x 66 clusters x 2 x 16 warps) = 0.82 of the warp time;
    // 300 x 300 a sliver.
    let p = plan(28_672, 8192, DType::I8, DType::F16, 16, SM90_AUTO);
    assert_eq!(p.symbol, "gemm_t2_i8_f16_s16");
    let p = plan(300, 300, DType::I8, DType::F16, 16, SM90_AUTO);
    assert_eq!(p.symbol, "gemm_t2_i8_f16_n16_r2");
    // 17 bf16 tokens: a CTA of 32 in 8 slices of 8 k tiles, 16 clusters, 4 rounds:
    // 896 x 64 / (4 x (8 + 1) x 16 x 8 x 16 warps) = 0.78 of the warp time.
    let p = plan(28_672, 8192, DType::BF16, DType::BF16, 17, SM90_AUTO);
    assert_eq!((p.symbol.as_str(), p.cluster), ("gemm_t2_bf16_bf16_s32", 8));
    let p = plan(28_672, 8192, DType::I8, DType::BF16, 64, SM90_AUTO);
    assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_i8_bf16_s64", 1));
    // 32 int8 tokens of 28672 columns: no slice of 32 fits. Always splits them into
    // two 16-token groups; Auto would read the weights twice, and keeps one group of 32.
    let p = plan(8192, 28_672, DType::I8, DType::F16, 32, SM90);
    assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_i8_f16_s16", 2));
    let p = plan(8192, 28_672, DType::I8, DType::F16, 32, SM90_AUTO);
    assert_eq!((p.symbol.as_str(), p.grid.1), ("gemm_t2_i8_f16_n32_r2", 1));
    // With wgmma: the `_w` kernels, activations staged by k tile (16 bytes of padding
    // per tile, not per token); the same 4 slices of 16 k tiles as above.
    let p = plan(28_672, 8192, DType::F16, DType::F16, 16, SM90A);
    assert_eq!((p.symbol.as_str(), p.cluster), ("gemm_t2_f16_f16_w16", 4));
    assert_eq!(
        p.smem as usize,
        split_fixed_smem(16, true) + 16 * (16 * 256 + 16)
    );
    // 64 tokens with wgmma: 16 warps of one row tile each, 8 slices of 8 k tiles.
    let p = plan(28_672, 8192, DType::I8, DType::F16, 64, SM90A);
    assert_eq!(
        (p.symbol.as_str(), p.threads, p.cluster),
        ("gemm_t2_i8_f16_w64", 512, 8)
    );
    assert_eq!(
        p.smem as usize,
        split_fixed_smem(64, true) + 8 * (64 * 128 + 16)
    );
    // Auto with wgmma: 64 int8 tokens on 28672 x 8192 fill 896 x 64 / (7 x (8 + 1) x 16
    // clusters x 8 x 8 pair warps) = 0.89 of the warp time; 4096 x 4096 at 16 f16
    // tokens 0.40.
    let p = plan(28_672, 8192, DType::I8, DType::F16, 64, SM90A_AUTO);
    assert_eq!(p.symbol, "gemm_t2_i8_f16_w64");
    let p = plan(4096, 4096, DType::F16, DType::F16, 16, SM90A_AUTO);
    assert_eq!(p.symbol, "gemm_t2_f16_f16_n16_r4");
}

#[test]
fn quantize_x_takes_the_single_token_int8_kernel() {
    let a = GemmArgs {
        quantize_x: true,
        ..args(DType::BF16, DType::BF16, 1)
    };
    let p = plan_gemm(100, 300, Levels::Int2, 0x10, None, &a, GPU).unwrap();
    // The staged row is int8: 3 k tiles of 128 bytes.
    assert_eq!(
        (p.symbol.as_str(), p.smem as usize),
        ("gemm_int2_bf16q_bf16_n1", gemm_fixed_smem(1, 1) + 3 * 128)
    );
    for bad in [
        GemmArgs { batch: 2, ..a },
        GemmArgs {
            x_dtype: DType::I8,
            y_dtype: DType::F16,
            x_scale: Some(0x3000),
            ..a
        },
    ] {
        assert!(matches!(
            plan_gemm(100, 300, Levels::Int2, 0x10, None, &bad, GPU),
            Err(Error::Unsupported { .. })
        ));
    }
}

/// W2A8 in one launch (the kernel quantizes its row) up to the columns whose int8 row fits
/// the single-token kernel's shared memory, which differs per GPU; the planner takes the
/// quantizing kernel exactly up to that limit and names it past it.
#[test]
fn the_one_launch_limit_follows_the_shared_memory() {
    // sm_86 / sm_89 (99 KB a CTA), the A100 (163 KB), the H100 (227 KB).
    let gpus = [99usize, 163, 227].map(|kb| FakeGpu {
        max_dynamic: kb << 10,
        ..*GPU
    });
    let mut limits = Vec::new();
    for gpu in &gpus {
        for (levels, x) in [(Levels::Ternary, DType::F16), (Levels::Int2, DType::BF16)] {
            let limit = one_launch_max_cols(levels, x, gpu).unwrap();
            // Whole k tiles of int8 beside the kernel's fixed shared memory.
            let room = gpu.max_dynamic - gemm_fixed_smem(1, 1);
            assert!(limit % 128 == 0 && limit <= room && room < limit + 128);
            assert!(quantizes_in_kernel(limit, levels, x, gpu).unwrap());
            assert!(!quantizes_in_kernel(limit + 1, levels, x, gpu).unwrap());
            let at = |cols: usize| GemmArgs {
                quantize_x: true,
                ldx: cols,
                ..args(x, x, 1)
            };
            let p = plan_gemm(100, limit, levels, 0x10, None, &at(limit), gpu).unwrap();
            assert_eq!(
                p.symbol,
                gemm_symbol(levels, x, Staging::Quantized, x, Cta::Single)
            );
            assert_eq!(p.smem as usize, gemm_fixed_smem(1, 1) + limit);
            let past = plan_gemm(100, limit + 1, levels, 0x10, None, &at(limit + 1), gpu);
            assert!(
                matches!(past, Err(Error::TooLarge { arg: "cols", limit: l, .. }) if l == limit as u64),
                "{past:?}"
            );
            limits.push(limit);
        }
    }
    // Less the 37,152 fixed bytes, 99 KB hold 501 k tiles, 163 KB 1013, 227 KB 1525.
    assert_eq!(
        (limits[0], limits[2], limits[4]),
        (64_128, 129_664, 195_200)
    );
    assert_eq!(
        (limits[1], limits[3], limits[5]),
        (limits[0], limits[2], limits[4])
    );
}

#[test]
fn prefill_kernel_from_65_tokens() {
    // 17000 x 300: 67 blocks of 256 rows, 3 k tiles; 200 tokens are two token blocks,
    // so 134 tiles, half the fake GPU's 264 resident CTAs.
    const ROWS: usize = 17_000;
    let args = |x: DType, y: DType, batch: usize| GemmArgs {
        ldy: ROWS,
        x_scale: (x == DType::I8).then_some(0x3000),
        ..args(x, y, batch)
    };
    for (x, y, pre, bytes) in [
        (DType::F16, DType::F16, "prefill_x_16", 200 * 3 * 256),
        (
            DType::I8,
            DType::BF16,
            "prefill_x_i8",
            200 * 3 * 128 + 200 * 4,
        ),
    ] {
        let a = args(x, y, 200);
        let p = plan_gemm(ROWS, 300, Levels::Int2, 0x10, None, &a, SM90A_PREFILL).unwrap();
        assert_eq!(
            p.symbol,
            format!("gemm_int2_{}_{}_p128", x.name(), y.name())
        );
        assert_eq!((p.grid, p.threads, p.cluster), ((134, 1, 1), 256, 0));
        assert_eq!((p.smem as usize, p.params.x), (prefill_smem(x), 0));
        let prepass = p.prepass.unwrap();
        assert_eq!((prepass.symbol, prepass.bytes), (pre, bytes));
        assert!(prepass.tensor_maps);
        assert_eq!(prepass.split_tiles, None);
        // ldx 300 is a multiple of 4 and 2; so is cols.
        assert_eq!(prepass.vec, 1);
    }
    let odd = GemmArgs {
        x: 0x1002,
        ..args(DType::F16, DType::F16, 200)
    };
    let p = plan_gemm(ROWS, 300, Levels::Ternary, 0x10, None, &odd, SM90A_PREFILL).unwrap();
    assert_eq!(p.prepass.unwrap().vec, 0);
    // 64 tokens stay with the split kernels; so does one token block in tiles that fill
    // less than half the GPU (two take the prefill kernel), and everything without it.
    let p = plan_gemm(
        16_000,
        300,
        Levels::Ternary,
        0x10,
        None,
        &args(DType::F16, DType::F16, 200),
        SM90A_PREFILL,
    );
    assert!(p.unwrap().prepass.is_some());
    for (rows, batch, gpu) in [
        (ROWS, 64, SM90A_PREFILL),
        (16_000, 128, SM90A_PREFILL),
        (ROWS, 200, SM90A_AUTO),
    ] {
        let a = args(DType::F16, DType::F16, batch);
        let p = plan_gemm(rows, 300, Levels::Ternary, 0x10, None, &a, gpu).unwrap();
        assert!(p.prepass.is_none(), "{rows} {batch}");
    }
}

#[test]
fn prefill_splits_k_where_its_tiles_leave_the_gpu_idle() {
    // 8192 x 28672 (32 row blocks, 224 k tiles) on the fake's 264 resident CTAs: 256
    // tokens are 64 tiles, split over 4 CTAs each (one wave of 56 + 6 steps; 2 take 112 +
    // 6, 8 two waves of 28 + 6); 2048 tokens (512 tiles) keep whole K.
    for (batch, grid, split) in [(256, 256, true), (2048, 512, false)] {
        let a = GemmArgs {
            ldx: 28672,
            ldy: 8192,
            ..args(DType::F16, DType::F16, batch)
        };
        let p = plan_gemm(8192, 28672, Levels::Ternary, 0x10, None, &a, SM90A_PREFILL);
        let p = p.unwrap();
        let suffix = if split { "k" } else { "" };
        assert_eq!(p.symbol, format!("gemm_t2_f16_f16_p128{suffix}"));
        assert_eq!((p.grid.0, p.cluster), (grid, 0), "{batch}");
        let pre = p.prepass.unwrap();
        let tiles = split.then_some(64);
        assert_eq!(pre.split_tiles, tiles);
        // The workspace: activations, then 128 KB of partial sums per CTA and a counter
        // per tile, each 256-byte aligned.
        let x = batch * 224 * 128 * 2;
        let (partial, counters, bytes) = pre.layout(grid as usize);
        assert_eq!(partial, x);
        if split {
            assert_eq!(
                (counters, bytes),
                (
                    x + 256 * PREFILL_PARTIAL,
                    x + 256 * PREFILL_PARTIAL + 64 * 4
                )
            );
        } else {
            assert_eq!(bytes, x);
        }
    }
}

#[test]
fn one_token_block_splits_k_only_where_the_split_kernels_do_not_run() {
    // 128 tokens on 8192 x 8192: 32 tiles, an eighth of the fake's CTAs. Split over 8
    // CTAs each (8 k tiles + 6 steps) they fill it; the prefill kernel then runs where the
    // split kernels do not take the batch (here: without clusters), else they do.
    let a = GemmArgs {
        ldx: 8192,
        ldy: 8192,
        ..args(DType::F16, DType::F16, 128)
    };
    let plan = |gpu: &FakeGpu| {
        let p = plan_gemm(8192, 8192, Levels::Ternary, 0x10, None, &a, gpu).unwrap();
        (p.symbol, p.grid.0)
    };
    let no_clusters = FakeGpu {
        clusters: false,
        ..*SM90A_PREFILL
    };
    assert_eq!(
        plan(&no_clusters),
        ("gemm_t2_f16_f16_p128k".to_string(), 256)
    );
    let (symbol, _) = plan(&FakeGpu {
        split: SplitKernels::Always,
        ..*SM90A_PREFILL
    });
    assert_eq!(symbol, "gemm_t2_f16_f16_w64");
}

#[test]
fn mma_prefill_kernel_without_wgmma() {
    // 17000 x 300 at 200 tokens, as above, on GPUs without wgmma: the `_m128` kernel,
    // read through `x`, with as many stages as fit (none below two).
    let gpu = |max_dynamic: usize| FakeGpu {
        prefill: true,
        max_dynamic,
        ..*GPU
    };
    for (x, y, max_dynamic, stages) in [
        (DType::F16, DType::F16, 163 << 10, Some(4)),
        (DType::I8, DType::I32, 163 << 10, Some(6)),
        (DType::BF16, DType::BF16, 99 << 10, Some(2)),
        (DType::I8, DType::F16, 99 << 10, Some(4)),
        (DType::F16, DType::F16, 60 << 10, None),
        (DType::I8, DType::F16, 60 << 10, Some(2)),
    ] {
        let a = GemmArgs {
            ldy: 17_000,
            x_scale: (x == DType::I8).then_some(0x3000),
            ..args(x, y, 200)
        };
        let p = plan_gemm(
            17_000,
            300,
            Levels::Ternary,
            0x10,
            None,
            &a,
            &gpu(max_dynamic),
        );
        let p = p.unwrap();
        match stages {
            Some(stages) => {
                assert_eq!(p.symbol, format!("gemm_t2_{}_{}_m128", x.name(), y.name()));
                assert_eq!((p.grid, p.threads, p.cluster), ((134, 1, 1), 256, 0));
                let stage = 128 * 128 * x.size() + 16 * 512;
                assert_eq!(p.smem as usize, stages * stage);
                assert!(!p.prepass.unwrap().tensor_maps);
            }
            None => assert!(p.prepass.is_none()),
        }
    }
}

#[test]
fn rejects_bad_arguments() {
    let bad = |a: GemmArgs| plan_gemm(100, 300, Levels::Ternary, 0x10, None, &a, GPU).unwrap_err();
    assert!(matches!(
        bad(args(DType::F16, DType::BF16, 1)),
        Error::Unsupported { .. }
    ));
    assert!(matches!(
        bad(args(DType::F16, DType::F16, 0)),
        Error::Empty { .. }
    ));
    assert!(matches!(
        bad(GemmArgs {
            ldx: 299,
            ..args(DType::F16, DType::F16, 1)
        }),
        Error::ShapeMismatch { arg: "ldx", .. }
    ));
    assert!(matches!(
        bad(GemmArgs {
            y: 0x2001,
            ..args(DType::F16, DType::F16, 1)
        }),
        Error::Misaligned { arg: "y", .. }
    ));
    assert!(matches!(
        bad(GemmArgs {
            x: 0,
            ..args(DType::F16, DType::F16, 1)
        }),
        Error::Misaligned { arg: "x", .. }
    ));
    assert!(matches!(
        bad(GemmArgs {
            x_scale: None,
            ..args(DType::I8, DType::F16, 1)
        }),
        Error::Unsupported { .. }
    ));
    assert!(matches!(
        bad(GemmArgs {
            bias: Some(0x4000),
            ..args(DType::I8, DType::I32, 1)
        }),
        Error::Unsupported { .. }
    ));
    assert!(matches!(
        bad(args(DType::F16, DType::F16, 65_535 * 32 + 1)),
        Error::TooLarge { arg: "batch", .. }
    ));
}
