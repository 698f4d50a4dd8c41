"""CPU: ``warp_bitnet.linear`` (the native CPU kernels) against ``torch.nn.functional.linear`` in
float32 on the same weights, batch 1; median and minimum of many calls (the machine may be
shared, so the minimum is reported too), with torch's and our thread counts.

    python examples/bench_cpu_linear.py [--shape 4096x4096] [--iters 200] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import warp_bitnet as wb
from warp_bitnet import _cpu, _native


def timed(f, iters: int) -> tuple[float, float]:
    f()
    t = []
    for _ in range(iters):
        s = time.perf_counter()
        f()
        t.append((time.perf_counter() - s) * 1e6)
    return statistics.median(t), min(t)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="4096x4096", help="MxN")
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--threads", type=int, default=0, help="ours (0: WARP_BITNET_THREADS or all CPUs)")
    a = p.parse_args()
    m, n = (int(v) for v in a.shape.split("x"))
    W = torch.randint(-1, 2, (m, n)).float()
    packed, scale = wb.pack_ternary(W), torch.tensor(0.7)
    dense = (W * scale).contiguous()
    x = torch.randn(1, n)
    rows = []
    with torch.no_grad():
        for quantize in (False, True):
            run = _cpu.runner(x, packed, scale, None, n, "ternary", quantize, a.threads)
            ours = timed(lambda run=run: run(x), a.iters)
            base = timed(lambda: torch.nn.functional.linear(x, dense), a.iters)
            y = wb.linear(x, packed, scale, quantize_activations=quantize).double()
            ref = x.double() @ dense.double().T
            rows.append(
                {
                    "shape": f"{m}x{n}",
                    "batch": 1,
                    "activation": "i8" if quantize else "f32",
                    "ours_median_us": ours[0],
                    "ours_min_us": ours[1],
                    "f_linear_f32_median_us": base[0],
                    "f_linear_f32_min_us": base[1],
                    "speedup_median": base[0] / ours[0],
                    "max_rel_err": ((y - ref).abs().max() / ref.abs().max()).item(),
                }
            )
    info = {
        "isa": _native.cpu_isa(),
        "threads": a.threads or _native.cpu_threads(),
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
        "rows": rows,
    }
    print(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
