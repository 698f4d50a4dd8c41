"""CPU path of the functional API: the native CPU kernels (AVX2 or portable, chosen at run
time; ``WARP_BITNET_CPU_ISA`` forces one) on weights converted once to the CPU layout
(docs/FORMATS.md, "C2") and kept in the one layout cache (``_layouts``) per packed tensor
and version. Threads: ``threads`` per call, default ``WARP_BITNET_THREADS`` or every CPU."""

from __future__ import annotations

import torch

from . import _layouts, _native


def applies(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether the native kernels serve this call: CPU tensors, no autograd graph to record,
    not traced by torch.compile, at least one token."""
    if x.device.type != "cpu" or x.numel() == 0 or torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *others))
    return not grad


def weight(packed: torch.Tensor, n: int, levels: str) -> _native.CpuWeight:
    """The CPU-layout conversion of ``packed`` (validated by the native conversion, whose
    error names the first bad code or padding), cached per tensor version."""
    stamp = (packed._version, n, levels)
    w = _layouts.get(packed, "cpu", stamp)
    if w is None:
        words = packed.detach().contiguous()
        w = _layouts.put(packed, "cpu", stamp, _native.CpuWeight(words.data_ptr(), packed.shape[0], n, levels))
    return w


def runner(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    n: int,
    levels: str = "ternary",
    quantize_activations: bool = False,
    threads: int = 0,
    into: bool = False,
):
    """A function computing ``y = (x . Wᵀ) * scale + bias`` on the CPU kernels for
    activations of ``x``'s shape, dtype and layout (float32 arithmetic, output in ``x``'s
    dtype); the weights, scale and bias are converted once, here (arguments checked by the
    caller). With ``into`` (float32 contiguous ``x`` only) it takes ``(x, y)`` and writes ``y``,
    a float32 contiguous tensor of ``x.numel() // n * rows`` elements."""
    w = weight(packed, n, levels)
    s = None if scale is None else scale.detach().to(torch.float32).reshape(-1).contiguous()
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    sp, sl = (0, 0) if s is None else (s.data_ptr(), s.numel())
    bp = 0 if b is None else b.data_ptr()
    rows, dtype, out, batch = w.rows, x.dtype, (*x.shape[:-1], w.rows), x.numel() // n
    gemm = w.gemm
    # Each torch call costs about a microsecond or more: a float32 contiguous x (the decode
    # loop's) goes to the kernel as it is, into an output of its final shape.
    plain = x.dtype == torch.float32 and x.is_contiguous()

    def run_into(x: torch.Tensor, y: torch.Tensor) -> None:
        gemm(x.data_ptr(), batch, sp, sl, bp, y.data_ptr(), quantize_activations, threads)

    def run_plain(x: torch.Tensor) -> torch.Tensor:
        y = torch.empty(out, dtype=torch.float32)
        gemm(x.data_ptr(), batch, sp, sl, bp, y.data_ptr(), quantize_activations, threads)
        return y

    def run(x: torch.Tensor) -> torch.Tensor:
        x2 = x.detach().reshape(-1, n).to(torch.float32).contiguous()
        y = torch.empty(batch, rows, dtype=torch.float32)
        gemm(x2.data_ptr(), batch, sp, sl, bp, y.data_ptr(), quantize_activations, threads)
        return y.to(dtype).reshape(out)

    chosen = run_into if into else run_plain if plain else run
    chosen.keep = (s, b)  # type: ignore[attr-defined]  # alive as long as the runner: it holds their addresses
    return chosen
