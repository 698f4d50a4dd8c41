"""Tokens/s of a whole model: the bitnet-b1.58-2B-4T architecture on our layers vs bf16.

    python examples/bench_model.py [--batch 1 16] [--new-tokens 64] [--prefill 512] [--json out.json]
    python examples/bench_model.py --tiny --device cpu      # a smoke run of the script itself

Both models are the same transformers ``BitNetForCausalLM`` (config of
``microsoft/bitnet-b1.58-2B-4T``) with random weights; random ternary weights cost what real
ones do. The baseline keeps bf16 ``nn.Linear`` layers; ours replaces every linear layer but
``lm_head`` with ``warp_bitnet.BitLinear`` (int8 activations, as the real model), q/k/v and
gate/up fused into one layer each (``warp_bitnet.hf.fuse_projections``). Reported:

- decode time per token at each batch size, from ``generate`` with a static KV cache
  (``(t(1 + N new tokens) - t(1 new token)) / N``); on CUDA, transformers compiles the decode
  step with ``mode="reduce-overhead"`` (CUDA graphs) for a static cache, unless ``--eager``;
- prefill time of ``--prefill`` tokens at batch 1;
- on CUDA, the GPU time of one decode step replayed from a CUDA graph (no host overhead:
  ``generate`` adds its own Python time per token to both models alike), of the eager model and
  of the model compiled by inductor (``torch.compile``, which fuses the elementwise work between
  the linear layers), with the kernel launches per step of each;
- a per-token breakdown from the profiler over eager decode steps: kernel time in linear layers
  (our GEMM and quantizer kernels; cuBLAS/CUTLASS GEMMs for bf16), in attention (flash / SDPA
  kernels) and the rest, the number of kernel launches per token, and the kernels that take most
  of the rest.

The README's numbers come from this script (bench/results has each run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import transformers
import warp_bitnet as wb
from torch import nn

ATTENTION_MARKERS = ("flash", "fmha", "attention", "sdpa", "softmax")
BF16_GEMM_MARKERS = ("gemm", "gemv", "cutlass", "xmma", "cublas", "nvjet")  # nvjet: cuBLAS on Hopper
OUR_MARKERS = ("gemm_t2", "quantize_i8", "i2_to_t2")


def config(tiny: bool) -> transformers.BitNetConfig:
    if tiny:
        sizes = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4}
        sizes |= {"num_key_value_heads": 2, "vocab_size": 97, "bos_token_id": 1}
    else:  # microsoft/bitnet-b1.58-2B-4T
        sizes = {"hidden_size": 2560, "intermediate_size": 6912, "num_hidden_layers": 30, "num_attention_heads": 20}
        sizes |= {"num_key_value_heads": 5, "vocab_size": 128256}
    return transformers.BitNetConfig(
        **sizes, max_position_embeddings=4096, tie_word_embeddings=True, eos_token_id=None, pad_token_id=0
    )


def ternary_copy(model: nn.Module) -> nn.Module:
    """The model with every nn.Linear but lm_head as a BitLinear (absmean, int8 activations),
    q/k/v and gate/up fused (``warp_bitnet.hf.fuse_projections``)."""
    import copy

    ours = copy.deepcopy(model)
    for name, m in list(ours.named_modules()):
        if type(m) is nn.Linear and not name.endswith("lm_head"):
            ours.set_submodule(name, wb.BitLinear.from_linear(m, quantize_activations=True))
    return wb.hf.fuse_projections(ours)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int) -> float:
    """Median wall time of ``fn`` in ms (synchronized)."""
    times = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def decode_ms_per_token(model, batch: int, new_tokens: int, device: str, reps: int, eager: bool) -> float:
    ids = torch.randint(1, model.config.vocab_size, (batch, 8), device=device)

    def gen(n):
        kw = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "pad_token_id": 0, "disable_compile": eager}
        return lambda: model.generate(ids, cache_implementation="static", **kw)

    gen(1 + new_tokens)()  # warm-up: compilation and graph capture
    short = timed(gen(1), device, reps)
    long = timed(gen(1 + new_tokens), device, reps)
    return (long - short) / new_tokens


def graph_step_ms(model, batch: int, steps: int = 50, compiled: bool = False) -> float | None:
    """GPU time (ms) of one decode step at ``batch`` tokens replayed from a CUDA graph
    (static KV cache, position 16): the model's kernels without any host overhead, what a
    serving loop with graphs pays per token; ``compiled``: of ``torch.compile(model)``.
    None (and a message) if capture fails."""
    ids = torch.randint(1, model.config.vocab_size, (batch, 1), device="cuda")
    cache = transformers.StaticCache(config=model.config, max_cache_len=64)
    pos = torch.tensor([16], device="cuda")
    forward = torch.compile(model, dynamic=False) if compiled else model

    def step():
        return forward(ids, past_key_values=cache, cache_position=pos, use_cache=True)

    try:
        with torch.no_grad():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    step()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
    except RuntimeError as e:  # a model that syncs the host cannot be captured: report, go on
        print(f"CUDA graph capture failed: {type(e).__name__}: {e}")
        return None
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / steps


def prefill_ms(model, tokens: int, device: str, reps: int) -> float:
    ids = torch.randint(1, model.config.vocab_size, (1, tokens), device=device)

    def run():
        with torch.no_grad():
            model(ids, use_cache=False)

    run()
    return timed(run, device, reps)


def breakdown(model, steps: int = 8) -> dict:
    """Per-token kernel time (ms) in linear layers, attention and the rest, and launches per
    token, over ``steps`` eager decode steps (CUDA only)."""
    from torch.profiler import ProfilerActivity, profile

    ids = torch.randint(1, model.config.vocab_size, (1, 8), device="cuda")
    with torch.no_grad():
        out = model(ids, use_cache=True)
        past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                out = model(tok, past_key_values=past, use_cache=True)
                past, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
    split = {"linear_ms": 0.0, "attention_ms": 0.0, "other_ms": 0.0}
    other: dict[str, list[float]] = {}
    launches = 0
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        launches += 1
        name = e.name.lower()
        us = e.device_time
        if any(k in name for k in OUR_MARKERS) or (
            any(k in name for k in BF16_GEMM_MARKERS) and not any(k in name for k in ATTENTION_MARKERS)
        ):
            split["linear_ms"] += us / 1e3
        elif any(k in name for k in ATTENTION_MARKERS):
            split["attention_ms"] += us / 1e3
        else:
            split["other_ms"] += us / 1e3
            other.setdefault(e.name[:90], []).append(us)
    result = {k: v / steps for k, v in split.items()}
    result["launches_per_token"] = launches / steps
    top = sorted(other.items(), key=lambda kv: -sum(kv[1]))[:12]
    result["top_other"] = [
        {"kernel": k, "ms_per_token": sum(v) / steps / 1e3, "launches_per_token": len(v) / steps} for k, v in top
    ]
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model (smoke run)")
    ap.add_argument("--eager", action="store_true", help="no torch.compile / CUDA graphs")
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    dtype = torch.bfloat16 if a.device == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(a.device):
        base = transformers.BitNetForCausalLM(config(a.tiny)).to(dtype).eval()
    ours = ternary_copy(base)
    models = {"bf16" if dtype == torch.bfloat16 else "dense": base, "warp-bitnet": ours}

    results = {
        "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "warp_bitnet": wb.__version__,
        "tiny": a.tiny,
        "compiled": a.device == "cuda" and not a.eager,
        "models": {},
    }
    for name, model in models.items():
        r = {"prefill_ms": prefill_ms(model, a.prefill, a.device, a.reps)}
        for b in a.batch:
            ms = decode_ms_per_token(model, b, a.new_tokens, a.device, a.reps, a.eager)
            r[f"decode_ms_per_token_b{b}"] = ms
            r[f"tokens_per_s_b{b}"] = b * 1e3 / ms
        if a.device == "cuda":
            r["breakdown_b1"] = breakdown(model)
            for b in a.batch:
                r[f"graph_step_ms_b{b}"] = graph_step_ms(model, b)
            if not a.eager:
                r["compiled_graph_step_ms_b1"] = graph_step_ms(model, 1, compiled=True)
        results["models"][name] = r
        print(name, json.dumps(r, indent=1))
    base_name = next(iter(models))
    for b in a.batch:
        key = f"tokens_per_s_b{b}"
        speedup = results["models"]["warp-bitnet"][key] / results["models"][base_name][key]
        results[f"speedup_b{b}"] = speedup
        print(f"batch {b}: {speedup:.2f}x tokens/s vs {base_name}")
        key = f"graph_step_ms_b{b}"
        if a.device == "cuda" and None not in (
            results["models"]["warp-bitnet"][key],
            results["models"][base_name][key],
        ):
            ratio = results["models"][base_name][key] / results["models"]["warp-bitnet"][key]
            results[f"graph_step_speedup_b{b}"] = ratio
            print(f"batch {b}: {ratio:.2f}x decode-step GPU time (CUDA graph replay) vs {base_name}")
    key = "compiled_graph_step_ms_b1"
    steps = [results["models"][m].get(key) for m in ("warp-bitnet", base_name)]
    if None not in steps:
        results["compiled_graph_step_speedup_b1"] = steps[1] / steps[0]
        print(f"batch 1: {steps[1] / steps[0]:.2f}x compiled decode-step GPU time (CUDA graph replay) vs {base_name}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
