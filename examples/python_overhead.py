"""Per-call overhead of the Python path against a bare launch (run on a CUDA host).

    python examples/python_overhead.py [--rows 4096 --cols 4096]

Times, per call (host wall clock over many back-to-back calls, then one synchronize;
best of 5 such runs):
the native launch alone (`_native.gemm` with prepared pointers and a preallocated
output), the custom op through torch's dispatcher (`torch.ops.warp_bitnet.gemm`, what
torch.compile records), the op's implementation called directly (what eager code calls),
`warp_bitnet.linear` (validation + cached T2 lookup + op), `BitLinear.forward`, and a
dense f16 `F.linear` of the same shape for reference; and the GPU time of one GEMM from
a captured CUDA graph replayed many times.
"""

import argparse
import time

import torch
import warp_bitnet as wb
from warp_bitnet import _native


def per_call_us(fn, n=2000, repeats=5):
    """Best of ``repeats`` runs of ``n`` back-to-back calls (the least disturbed run, as
    timeit does)."""
    for _ in range(50):
        fn()
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--cols", type=int, default=4096)
    a = ap.parse_args()
    m, n = a.rows, a.cols
    W = torch.randint(-1, 2, (m, n), device="cuda", dtype=torch.float32)
    packed = wb.pack_ternary(W)
    layer = wb.BitLinear(n, m, bias=False).cuda()
    layer.weight_packed.copy_(packed)
    x = torch.randn(1, n, device="cuda", dtype=torch.float16)
    y = torch.empty(1, m, device="cuda", dtype=torch.float16)
    t2 = torch.ops.warp_bitnet.to_t2(packed, n)
    stream = torch.cuda.current_stream().cuda_stream
    dense = W.half()

    def bare():
        _native.gemm(
            0, t2.data_ptr(), "ternary", m, n, 0, False, x.data_ptr(), "float16", n,
            y.data_ptr(), "float16", m, 1, 0, 0, False, stream,
        )  # fmt: skip

    rows = {
        "native launch": per_call_us(bare),
        "torch.ops.warp_bitnet.gemm": per_call_us(lambda: torch.ops.warp_bitnet.gemm(t2, m, n, None, x, None)),
        "ops.eager(ops.gemm) (what linear calls)": per_call_us(
            lambda: wb.ops.eager(wb.ops.gemm)(t2, m, n, None, x, None)
        ),
        "warp_bitnet.linear": per_call_us(lambda: wb.linear(x, packed)),
        "BitLinear.forward": per_call_us(lambda: layer(x)),
        "torch F.linear, f16 dense (reference)": per_call_us(lambda: torch.nn.functional.linear(x, dense)),
    }
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(100):
            layer(x)
    rows["GPU time per GEMM (graph replay)"] = per_call_us(graph.replay, n=50) / 100
    print(f"{torch.cuda.get_device_name()}, {m}x{n}, batch 1, f16")
    for name, us in rows.items():
        print(f"{name:36s} {us:8.2f} us")


if __name__ == "__main__":
    main()
