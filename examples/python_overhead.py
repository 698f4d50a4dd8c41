"""Per-call cost of the eager Python API against a bare launch and torch (run on a CUDA host).

    python examples/python_overhead.py [--json out.json]
    python examples/python_overhead.py --cpu [--json out.json]   # any host: the CPU route

With ``--cpu`` it times the same public calls on CPU tensors of a 16 x 16 layer, whose
kernel takes well under a microsecond, against the bare native call (``CpuWeight.gemm``) and
a dense ``F.linear``: the host cost of the Python layers on the CPU route, not GPU numbers.

For each shape (4096 x 4096, the bitnet-b1.58-2B-4T layers, the Llama-3-8B MLP) it times, per
call, host wall clock over many back-to-back calls then one synchronize (best of 5 runs):
the old API's ``gemv(W_packed, X, Y)``, ``warp_bitnet.linear``, ``BitLinear.forward`` and a
dense f16 ``F.linear`` of the same shape, each cycling over enough weight copies that the
weights come from DRAM (L2-cold), as a decode loop reads them; and the GPU time of one
BitLinear GEMM from a captured CUDA graph. A loop runs at the slower of the host and the GPU:
where a call costs more than its GPU time, the host is the bottleneck.

The host overhead of each path is timed on a 256 x 256 layer, whose GEMM takes ~2 us of GPU
time, so the loop runs at the host's pace: the native launch alone (prepared pointers and
output), the op through torch's dispatcher, and the three public calls.
"""

import argparse
import json
import time

import torch
import warp_bitnet as wb
from warp_bitnet import _native

SHAPES = [(4096, 4096), (2560, 2560), (640, 2560), (6912, 2560), (2560, 6912), (14336, 4096), (4096, 14336)]


def per_call_us(fn, n=2000, repeats=5):
    """Best of ``repeats`` runs of ``n`` back-to-back calls (the least disturbed run, as
    timeit does)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    for _ in range(50):
        fn()
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return best


def cycle(items):
    """A function returning the next of ``items`` on each call."""
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return nxt


def copies_for(nbytes: int) -> int:
    """Copies of a tensor of ``nbytes`` that together exceed 4x the L2 cache."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return max(2, -(-4 * l2 // nbytes))


def layers(m: int, n: int, copies: int):
    """``copies`` BitLinear layers with random ternary weights, and their packed words."""
    out = []
    for _ in range(copies):
        layer = wb.BitLinear(n, m, bias=False).cuda()
        layer.weight_packed.copy_(wb.pack_ternary(torch.randint(-1, 2, (m, n), device="cuda").float()))
        out.append(layer)
    return out


def shape_rows(m: int, n: int) -> dict:
    x = torch.randn(n, device="cuda", dtype=torch.float16)
    y = torch.empty(m, device="cuda", dtype=torch.float16)
    x2 = x.unsqueeze(0)
    packed_layers = layers(m, n, copies_for(m * n // 4))
    dense = [torch.randn(m, n, device="cuda", dtype=torch.float16) for _ in range(copies_for(m * n * 2))]
    nl, nd = cycle(packed_layers), cycle(dense)
    rows = {
        "gemv (old API)": per_call_us(lambda: wb.gemv(nl().weight_packed, x, y)),
        "linear": per_call_us(lambda: wb.linear(x2, nl().weight_packed)),
        "BitLinear.forward": per_call_us(lambda: nl()(x2)),
        "F.linear f16 dense": per_call_us(lambda: torch.nn.functional.linear(x2, nd())),
    }
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for layer in packed_layers:
            layer(x2)
    rows["GPU time per GEMM (graph replay)"] = per_call_us(graph.replay, n=20) / len(packed_layers)
    dense_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(dense_graph):
        for d in dense:
            torch.nn.functional.linear(x2, d)
    rows["GPU time per F.linear (graph replay)"] = per_call_us(dense_graph.replay, n=20) / len(dense)
    return rows


def host_rows() -> dict:
    m = n = 256
    layer = layers(m, n, 1)[0]
    packed = layer.weight_packed
    x = torch.randn(n, device="cuda", dtype=torch.float16)
    x2 = x.unsqueeze(0)
    y = torch.empty(1, m, device="cuda", dtype=torch.float16)
    t2 = torch.ops.warp_bitnet.to_t2(packed, n)
    stream = torch.cuda.current_stream().cuda_stream
    dense = torch.randn(m, n, device="cuda", dtype=torch.float16)

    def bare():
        _native.gemm(
            0, t2.data_ptr(), "ternary", m, n, 0, False, x.data_ptr(), "float16", n,
            y.data_ptr(), "float16", m, 1, 0, 0, False, stream,
        )  # fmt: skip

    plan = _native.prepare_gemm(0, t2.data_ptr(), "ternary", m, n, 0, False, "float16", n, "float16", m, 1, 0, 0, False)

    return {
        "native launch": per_call_us(bare),
        "native prepared launch": per_call_us(lambda: plan.launch(x.data_ptr(), y.data_ptr(), stream)),
        "torch.ops.warp_bitnet.gemm": per_call_us(lambda: torch.ops.warp_bitnet.gemm(t2, m, n, None, x2, None)),
        "gemv (old API)": per_call_us(lambda: wb.gemv(packed, x, y[0])),
        "linear": per_call_us(lambda: wb.linear(x2, packed)),
        "BitLinear.forward": per_call_us(lambda: layer(x2)),
        "F.linear f16 dense": per_call_us(lambda: torch.nn.functional.linear(x2, dense)),
    }


def cpu_rows() -> dict:
    """Host cost per call on the CPU route (16 x 16, batch 1, float32, one thread)."""
    m = n = 16
    w = torch.randint(-1, 2, (m, n)).float()
    packed = wb.pack_ternary(w)
    layer = wb.BitLinear.from_packed(packed, torch.tensor(0.5), n)
    x = torch.randn(n)
    x2 = x.unsqueeze(0)
    y = torch.empty(m)
    cw = _native.CpuWeight(packed.data_ptr(), m, n, "ternary")
    yb = torch.empty(1, m)
    with torch.no_grad():
        return {
            "native CpuWeight.gemm": per_call_us(lambda: cw.gemm(x2.data_ptr(), 1, 0, 0, 0, yb.data_ptr(), False, 1)),
            "gemv (old API)": per_call_us(lambda: wb.gemv(packed, x, y)),
            "linear": per_call_us(lambda: wb.linear(x2, packed)),
            "BitLinear.forward": per_call_us(lambda: layer(x2)),
            "F.linear f32 dense": per_call_us(lambda: torch.nn.functional.linear(x2, w)),
        }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the table as JSON here")
    ap.add_argument("--cpu", action="store_true", help="time the CPU route (no GPU needed)")
    a = ap.parse_args()
    if a.cpu:
        torch.set_num_threads(1)
        rows = cpu_rows()
        print(f"CPU route, warp_bitnet from {wb.__file__}")
        print("Host cost per call, 16 x 16, batch 1, float32, no_grad:")
        for k, us in rows.items():
            print(f"  {k:32s} {us:8.2f} us")
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"device": "cpu", "host_16x16": rows}, f, indent=1)
        return
    name = torch.cuda.get_device_name()
    host = host_rows()
    print(f"{name}, warp_bitnet from {wb.__file__}")
    print("Host cost per call, 256 x 256, batch 1, f16 (the loop runs at the host's pace):")
    for k, us in host.items():
        print(f"  {k:32s} {us:8.2f} us")
    shapes = {}
    for m, n in SHAPES:
        rows = shape_rows(m, n)
        shapes[f"{m}x{n}"] = rows
        print(f"{m}x{n}, batch 1, f16, L2-cold (weights cycled over > 4x L2):")
        for k, us in rows.items():
            print(f"  {k:36s} {us:8.2f} us")
        ratio = rows["F.linear f16 dense"] / rows["gemv (old API)"]
        print(f"  gemv loop vs F.linear loop: {ratio:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": name, "host_256x256": host, "shapes": shapes}, f, indent=1)


if __name__ == "__main__":
    main()
