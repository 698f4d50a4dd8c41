"""CPU path of the functional API: the native CPU kernels (AVX2 or portable, chosen at run
time; ``WARP_BITNET_CPU_ISA`` forces one) on weights converted once to the CPU layout
(docs/FORMATS.md, "C2") and cached per packed tensor and version. Threads: ``threads`` per
call, default ``WARP_BITNET_THREADS`` or every CPU."""

from __future__ import annotations

import weakref

import torch

from . import _native

# id(packed) -> (weak reference to packed, (version, n, levels), CpuWeight); an entry leaves
# when its tensor dies.
_CACHE: dict[int, tuple] = {}


def applies(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    """Whether the native kernels serve this call: CPU tensors, no autograd graph to record,
    not traced by torch.compile, at least one token."""
    if x.device.type != "cpu" or x.numel() == 0 or torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *others))
    return not grad


def weight(packed: torch.Tensor, n: int, levels: str) -> _native.CpuWeight:
    """The CPU-layout conversion of ``packed`` (validated once), cached per tensor version."""
    key = id(packed)
    hit = _CACHE.get(key)
    version = (packed._version, n, levels)
    if hit is not None and hit[0]() is packed and hit[1] == version:
        return hit[2]
    from . import functional as F  # the functional API imports this module

    if levels == "ternary":
        F.validate_packed(packed, n)
    else:
        F._check_padding(F._word_codes(packed, n, "INT2"), n, "code 0")
    words = packed.detach().contiguous()
    w = _native.CpuWeight(words.data_ptr(), packed.shape[0], n, levels)
    _CACHE[key] = (weakref.ref(packed, lambda _, key=key: _CACHE.pop(key, None)), version, w)
    return w


def linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    n: int,
    levels: str = "ternary",
    quantize_activations: bool = False,
    threads: int = 0,
) -> torch.Tensor:
    """``y = (x . Wᵀ) * scale + bias`` on the CPU kernels; float32 arithmetic, output in
    ``x``'s dtype (arguments checked by the caller)."""
    w = weight(packed, n, levels)
    x2 = x.detach().reshape(-1, n).to(torch.float32).contiguous()
    y = torch.empty(x2.shape[0], w.rows, dtype=torch.float32)
    s = None if scale is None else scale.detach().to(torch.float32).reshape(-1).contiguous()
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    w.gemm(
        x2.data_ptr(),
        x2.shape[0],
        0 if s is None else s.data_ptr(),
        0 if s is None else s.numel(),
        0 if b is None else b.data_ptr(),
        y.data_ptr(),
        quantize_activations,
        threads,
    )
    return y.to(x.dtype).reshape(*x.shape[:-1], w.rows)
