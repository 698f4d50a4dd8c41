"""Large batches (prefill, training) through ``warp_bitnet.linear`` against torch's dense
f16 ``F.linear`` on the same shapes (run on a CUDA host).

    python examples/bench_prefill.py [--json out.json] [--profile]

Where ``functional.dense_path`` says so (by batch, and on sm_90a by whether the GEMM takes the
split-K kernels), ``linear`` decodes the packed weights to a dense matrix and runs cuBLAS (int8
``torch._int_mm`` for W2A8); elsewhere, the ternary kernels.
Times are CUDA-event medians of 50 calls after warm-up, one weight copy (at these batch sizes
the GEMM is compute-bound, so L2 residency hardly matters; the decode is included in ours).
The ``dX`` rows are the training input gradient of the 70B gate/up layer, ``dY . W`` (2048 x
28672 times 28672 x 8192), ours on the packed transposed matrix. ``--profile`` prints, for the
70B gate/up layer at 2048 tokens, the GPU time of every kernel each path launches.
"""

import argparse
import json
import statistics

import torch
import warp_bitnet as wb

SHAPES = {
    "bitnet-2b gate/up": (6912, 2560),
    "llama3-8b gate/up": (14336, 4096),
    "llama3-70b gate/up": (28672, 8192),
    "llama3-70b down": (8192, 28672),
}


def median_ms(fn, iters=50):
    for _ in range(5):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def profile(fns):
    """GPU time per kernel of each named function, over 10 calls."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, fn in fns.items():
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                fn()
            torch.cuda.synchronize()
        print(f"== {name}: GPU time per call, by kernel")
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        for e in sorted(events, key=lambda e: -e.device_time_total):
            print(f"  {e.device_time_total / 10 / 1e3:8.3f} ms  {e.count / 10:4.1f}x  {e.key[:110]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 64, 128, 256, 512, 2048])
    ap.add_argument("--json")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    rows = []
    print(
        f"{torch.cuda.get_device_name()}: ours vs dense f16 F.linear (ms); ours takes the dense path where"
        " functional.dense_path says"
    )
    for name, (m, n) in SHAPES.items():
        w = torch.randint(-1, 2, (m, n), device="cuda", dtype=torch.float16)
        packed = wb.pack_ternary(w)
        t2 = wb.ops.to_t2(packed, n)
        for b in a.batch:
            x = torch.randn(b, n, device="cuda", dtype=torch.float16)
            dense = median_ms(lambda x=x, w=w: torch.nn.functional.linear(x, w))
            f16 = median_ms(lambda x=x, p=packed: wb.linear(x, p))
            i8 = median_ms(lambda x=x, p=packed: wb.linear(x, p, quantize_activations=True))
            # The GEMV kernels alone (no dense fallback), to place the dense thresholds.
            kf16 = median_ms(lambda x=x, t=t2, m=m: wb.functional._linear_t2(x, t, m, None, None, False))
            ki8 = median_ms(lambda x=x, t=t2, m=m: wb.functional._linear_t2(x, t, m, None, None, True))
            row = {"shape": name, "rows": m, "cols": n, "batch": b, "dense_f16_ms": dense, "ours_f16_ms": f16,
                   "ours_w2a8_ms": i8, "kernels_f16_ms": kf16, "kernels_w2a8_ms": ki8,
                   "speedup_f16": dense / f16, "speedup_w2a8": dense / i8}  # fmt: skip
            rows.append(row)
            print(f"{name:20s} {m}x{n} B={b:5d}  dense {dense:7.3f}  ours f16 {f16:7.3f} ({dense / f16:4.2f}x)  "
                  f"W2A8 {i8:7.3f} ({dense / i8:4.2f}x)  kernels only: f16 {kf16:7.3f} W2A8 {ki8:7.3f}")  # fmt: skip
    # dX of the 70B gate/up layer: dY [B, 28672] . W [28672, 8192].
    m, n = SHAPES["llama3-70b gate/up"]
    w = torch.randint(-1, 2, (m, n), device="cuda", dtype=torch.float16)
    packed_t = wb.pack_ternary(w.t().contiguous())
    for b in a.batch:
        dy = torch.randn(b, m, device="cuda", dtype=torch.float16)
        dense = median_ms(lambda dy=dy: dy @ w)
        f16 = median_ms(lambda dy=dy: wb.linear(dy, packed_t))
        rows.append({"shape": "llama3-70b gate/up dX", "rows": n, "cols": m, "batch": b, "dense_f16_ms": dense,
                     "ours_f16_ms": f16, "speedup_f16": dense / f16})  # fmt: skip
        print(
            f"{'llama3-70b gate/up dX':20s} {n}x{m} B={b:5d}  dense {dense:7.3f}  ours f16 {f16:7.3f} ({dense / f16:4.2f}x)"
        )
    if a.profile:
        packed = wb.pack_ternary(w)
        x = torch.randn(2048, n, device="cuda", dtype=torch.float16)
        dy = torch.randn(2048, m, device="cuda", dtype=torch.float16)
        profile({
            "dense f16 F.linear": lambda: torch.nn.functional.linear(x, w),
            "ours f16": lambda: wb.linear(x, packed),
            "ours W2A8": lambda: wb.linear(x, packed, quantize_activations=True),
            "dense dX": lambda: dy @ w,
            "ours dX": lambda: wb.linear(dy, packed_t),
        })  # fmt: skip
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
