"""Quantizers: ternary weights (BitNet b1.58), INT2 weights and per-token int8 activations.

The public quantizers run the Rust crate's (``_native``; core ``quant``), the INT2 Lloyd loop
included. Two PyTorch twins stay here because they must run where the native module cannot:
``_weight_scale`` (the ternary scale, in every training step and under torch.compile) and
``_quantize_rows`` (the activation quantizer of the autograd, float32 CUDA and training
paths); python/tests/test_conformance.py checks them against the native quantizers bit for
bit. Rounding is round-half-to-even everywhere (``torch.round``), as in the Rust crate.
"""

from __future__ import annotations

import torch

from . import _layouts, _native, ops
from ._checks import check_tensor, host

WEIGHT_EPS = 1e-5
ACT_EPS = 1e-5
WEIGHT_METHODS = ("absmean", "absmean_row", "absmax")
INT2_METHODS = ("mse", "absmax")


def _float_weights(W: torch.Tensor) -> torch.Tensor:
    """Checks dense weights ``W`` and returns them as float32 on the host."""
    check_tensor("W", W, 2)
    if not W.is_floating_point():
        raise TypeError(f"`W` must be a float tensor, got {W.dtype}")
    w = host(W, torch.float32)
    if not torch.isfinite(w).all():
        raise ValueError("`W` holds NaN or infinity")
    return w


def _quantized(W: torch.Tensor, method: str, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Packed words and float32 scales (``[M]`` per row, else ``[]``) of ``W`` by the native
    quantizer ``method``, on ``W``'s device."""
    w = _float_weights(W)
    m, n = w.shape
    words = torch.empty(m, (n + 15) // 16, dtype=torch.int32)
    scale = torch.empty(m if per_row else (), dtype=torch.float32)
    _native.quantize_weights(w.data_ptr(), m, n, method, words.data_ptr(), scale.data_ptr())
    return _layouts.record_columns(words.to(W.device), n), scale.to(W.device)


def quantize_ternary(W: torch.Tensor, method: str = "absmean") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes dense weights to ternary (BitNet b1.58) and packs them.

    Args:
        W: ``[M, N]`` float weights.
        method: ``"absmean"`` (``gamma = max(mean|W|, 1e-5)``, one per tensor),
            ``"absmean_row"`` (one ``gamma`` per output row) or ``"absmax"``
            (``s = max(max|W|, 1e-5)``: the old project's choice; worse, most weights become 0).

    Returns:
        ``(packed, scale)``: int32 I2 words and float32 scale, shape ``[]`` or ``[M]``;
        ``W ~= unpack(packed) * scale``.
    """
    if method not in WEIGHT_METHODS:
        raise ValueError(f'`method` must be "absmean", "absmean_row" or "absmax", got {method!r}')
    return _quantized(W, method, method == "absmean_row")


def quantize_int2(W: torch.Tensor, method: str = "mse") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes dense weights to INT2 levels with one scale per row and packs them.

    A weight takes the level nearest ``W / s`` (``c = clamp(floor(W / s) + 2, 0, 3)``).
    ``method="absmax"``: ``s = max(max|W_row|, 1e-5) / 1.5``. ``"mse"`` (default): the ``s``
    minimizing the row's squared error, by Lloyd rounds from the absmax start (levels for ``s``,
    then ``s = sum(W * level) / sum(level^2)``) until no level changes (at most 100); the
    Rust quantizer, docs/FORMATS.md "INT2".

    Returns:
        ``(packed, scale)``: int32 INT2 words and float32 ``[M]``; ``W ~= unpack_int2(packed) * scale[:, None]``.
    """
    if method not in INT2_METHODS:
        raise ValueError(f'`method` must be "mse" or "absmax", got {method!r}')
    return _quantized(W, f"int2_{method}", True)


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (last dimension) absmax int8 quantization.

    ``s = 127 / max(max|x|, 1e-5)``, ``q = clamp(round(x * s), -128, 127)``, ``scale = 1 / s``.

    Returns:
        ``(q, scale)``: int8 tensor shaped like ``x`` and float32 ``scale`` of shape
        ``x.shape[:-1]``; ``x ~= q * scale[..., None]``.
    """
    check_tensor("x", x)
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a float tensor, got {x.dtype}")
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
        flat = x.reshape(-1, x.shape[-1])
        q, scale = ops.eager(ops.quantize_i8)(flat)
        return q.reshape(x.shape), scale.reshape(x.shape[:-1])
    xf = x.detach().to(torch.float32)
    if not torch.isfinite(xf).all():
        raise ValueError("`x` holds NaN or infinity")
    if x.is_cuda:  # float32 on the device: the PyTorch twin, no copy to the host
        return _quantize_rows(xf)
    flat = xf.reshape(-1, x.shape[-1]).contiguous()
    q = torch.empty(flat.shape, dtype=torch.int8)
    scale = torch.empty(flat.shape[0], dtype=torch.float32)
    _native.quantize_activations(flat.data_ptr(), flat.shape[0], flat.shape[1], q.data_ptr(), scale.data_ptr())
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])


def _weight_scale(w: torch.Tensor, method: str) -> torch.Tensor:
    """The float32 scale of float32 weights by the formulas of ``quantize_ternary``: ``[]``, or
    ``[M, 1]`` for ``absmean_row`` (means summed in float64, as the Rust quantizer does). No
    checks, no host sync: the training path calls it every step."""
    if method == "absmean":
        scale = w.abs().to(torch.float64).mean().to(torch.float32).clamp(min=WEIGHT_EPS)
    elif method == "absmean_row":
        scale = w.abs().to(torch.float64).mean(dim=1, keepdim=True).to(torch.float32).clamp(min=WEIGHT_EPS)
    elif method == "absmax":
        scale = w.abs().max().clamp(min=WEIGHT_EPS)
    else:
        raise ValueError(f'`method` must be "absmean", "absmean_row" or "absmax", got {method!r}')
    return scale


def _ternary_weight(w: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Wt, scale)`` of ``w`` (any float dtype) by the formulas of ``quantize_ternary``:
    float32 -1, 0, +1 and the float32 scale, ``[]`` or ``[M, 1]``."""
    wf = w.detach().to(torch.float32)
    s = _weight_scale(wf, method)
    return (wf / s).round().clamp(-1, 1), s


def _quantize_rows(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_activations_int8`` of float32 ``xf`` without its checks (no host sync)."""
    s = _div(127.0, xf.abs().amax(dim=-1, keepdim=True).clamp(min=ACT_EPS))
    return (xf * s).round().clamp(-128, 127).to(torch.int8), _div(1.0, s).squeeze(-1)


def _div(a: float, t: torch.Tensor) -> torch.Tensor:
    """``a / t`` correctly rounded. (``a / t`` with a Python scalar ``a`` is computed by
    PyTorch as ``t.reciprocal() * a``, one rounding more, which moves q by one in rare
    ties; the CUDA kernel and the Rust quantizer divide.)"""
    return torch.full_like(t, a) / t
