"""Packed weights: the I2 (ternary) and INT2 word layouts and the Hugging Face BitNet import.

Words are int32 tensors ``[M, ceil(N / 16)]`` with weight ``k`` of a word at bits
``2k .. 2k+1`` (docs/FORMATS.md, "I2" and "INT2"): I2 codes ``00 -> 0``, ``01 -> +1``,
``10 -> -1`` (bit-identical to the old project's ``pack_ternary``); INT2 code ``c`` is the
level ``c - 1.5``. Packing, validation and unpacking run in the Rust crate (``_native``):
the tensors are read on the host, so CUDA inputs are copied there and the result comes
back to their device.
"""

from __future__ import annotations

import torch

from . import _layouts, _native
from ._checks import PaddingError, check_tensor, host

LINEAR_CLASSES = ("autobitlinear", "bitlinear")

# What the padding of each layout must hold, for the messages.
_ZERO = {"ternary": "the zero code", "int2": "code 0"}


def _packed(m: int, n: int) -> torch.Tensor:
    """Fresh host words for ``m`` rows of ``n`` columns."""
    return torch.empty(m, (n + 15) // 16, dtype=torch.int32)


def pack_ternary(W: torch.Tensor) -> torch.Tensor:
    """Packs a ``[M, N]`` tensor of -1, 0, +1 into I2 words.

    Args:
        W: weights in {-1, 0, +1}, any real or integer dtype, any device.

    Returns:
        int32 tensor ``[M, ceil(N / 16)]`` on ``W``'s device; columns past ``N`` are zero weights.
    """
    check_tensor("W", W, 2)
    if W.is_floating_point() and not torch.isfinite(W).all():
        raise ValueError("`W` holds NaN or infinity")
    if not ((W == 0) | (W == 1) | (W == -1)).all():
        raise ValueError("`W` must hold only -1, 0 and +1 (quantize it with quantize_ternary)")
    return _pack(host(W, torch.int8), "ternary", W.device)


def _pack(values: torch.Tensor, levels: str, device: torch.device) -> torch.Tensor:
    """Host int8 weights (ternary) or uint8 codes (INT2) ``[M, N]`` -> words on ``device``."""
    m, n = values.shape
    words = _packed(m, n)
    _native.pack_words(values.data_ptr(), (m, n), levels, words.data_ptr())
    return _layouts.record_columns(words.to(device), n)


def check_words(packed: torch.Tensor, n: int, levels: str) -> None:
    """Checks that ``packed`` are int32 words holding ``n`` columns of ``levels`` codes:
    ValueError naming the first invalid code, PaddingError (a ValueError) for the first
    non-zero padding."""
    check_tensor("packed", packed, 2)
    layout = "I2" if levels == "ternary" else "INT2"
    if packed.dtype != torch.int32:
        raise TypeError(f"`packed` must be int32 ({layout} words), got {packed.dtype}")
    m, words = packed.shape
    if not (words - 1) * 16 < n <= words * 16:
        raise ValueError(f"`packed` has {words} words per row, which cannot hold N = {n} columns")
    words_host = host(packed, torch.int32)  # bound: the native call reads it by address
    fault = _native.find_bad_code(words_host.data_ptr(), m, n, levels)
    if fault is None:
        return
    kind, r, c = fault
    if kind == "code":
        raise ValueError(f"invalid 2-bit code 0b11 at row {r}, column {c}")
    raise PaddingError(f"padding at row {r}, column {c} is not {_ZERO[levels]}", r, c)


def validate_packed(packed: torch.Tensor, n: int) -> None:
    """Raises ValueError naming the first invalid code (``0b11``) or non-zero padding."""
    check_words(packed, n, "ternary")


def _unpacked(packed: torch.Tensor, n: int, levels: str, dtype: torch.dtype) -> torch.Tensor:
    """The bytes ``[M, n]`` of validated words: int8 weights, or uint8 INT2 codes."""
    check_words(packed, n, levels)
    out = torch.empty(packed.shape[0], n, dtype=dtype)
    words_host = host(packed, torch.int32)  # bound: the native call reads it by address
    _native.unpack_words(words_host.data_ptr(), packed.shape[0], n, levels, out.data_ptr())
    return out.to(packed.device)


def unpack_ternary(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Unpacks validated I2 words to an int8 ``[M, n]`` tensor of -1, 0, +1."""
    return _unpacked(packed, n, "ternary", torch.int8)


def pack_int2(W: torch.Tensor) -> torch.Tensor:
    """Packs a ``[M, N]`` tensor of INT2 weights into words (int32 ``[M, ceil(N / 16)]``;
    padding holds code 0).

    Args:
        W: float levels -1.5, -0.5, +0.5, +1.5, or integer codes 0, 1, 2, 3 (code ``c`` is
            level ``c - 1.5``; integer tensors cannot hold the half levels, so they are read
            as codes, which is what ``unpack_int2(...) + 1.5`` gives back).
    """
    check_tensor("W", W, 2)
    if W.dtype == torch.bool or W.is_complex():
        raise TypeError(f"`W` must be float levels or integer codes 0-3, got {W.dtype}")
    if W.is_floating_point():
        codes = W.to(torch.float32) + 1.5
        what = "`W` (float) must hold only the levels -1.5, -0.5, +0.5 and +1.5 (quantize it with quantize_int2)"
    else:
        codes = W.to(torch.int64)
        what = "`W` (integer) must hold only the codes 0, 1, 2 and 3 (or pass float levels -1.5 to +1.5)"
    if not ((codes == 0) | (codes == 1) | (codes == 2) | (codes == 3)).all():
        raise ValueError(what)
    return _pack(host(codes, torch.uint8), "int2", W.device)


def unpack_int2(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Unpacks INT2 words to float32 levels ``[M, n]``; raises ValueError on non-zero padding."""
    return _unpacked(packed, n, "int2", torch.uint8).to(torch.float32) - 1.5


def unpack_hf_bitnet(
    weight: torch.Tensor, weight_scale: torch.Tensor | float, linear_class: str = "autobitlinear"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpacks a Hugging Face BitNet linear weight (``microsoft/bitnet-b1.58-2B-4T`` family).

    Args:
        weight: uint8 ``[out / 4, in]``: bits ``2i .. 2i+1`` of byte ``[p, k]`` hold row
            ``i * out / 4 + p`` as ``code = w + 1`` (docs/FORMATS.md, "Imported layouts").
        weight_scale: the checkpoint's one-value ``weight_scale``.
        linear_class: the config's ``quantization_config.linear_class``: ``"autobitlinear"``
            (``W = Wt * weight_scale``) or ``"bitlinear"`` (legacy, ``W = Wt / weight_scale``).

    Returns:
        ``(ternary, scale)``: int8 ``[out, in]`` of -1, 0, +1 and float32 scale ``[]`` with
        ``W = ternary * scale``; ``pack_ternary(ternary)`` gives our packed words.
    """
    check_tensor("weight", weight, 2)
    if weight.dtype != torch.uint8:
        raise TypeError(f"`weight` must be uint8 (4 codes per byte), got {weight.dtype}")
    if linear_class not in LINEAR_CLASSES:
        raise ValueError(f'`linear_class` must be "autobitlinear" or "bitlinear", got {linear_class!r}')
    s = torch.as_tensor(weight_scale, dtype=torch.float32).detach().cpu()
    if s.numel() != 1:
        raise ValueError(f"`weight_scale` must hold one value, got shape {tuple(s.shape)}")
    s = s.reshape(())
    if linear_class == "bitlinear":
        s = torch.ones_like(s) / s  # one rounding, as the Rust import divides
    if not torch.isfinite(s):
        raise ValueError(f"the weight scale is not finite ({s.item()}); a zero `weight_scale` with bitlinear?")
    quarter, cols = weight.shape
    out = torch.empty(4 * quarter, cols, dtype=torch.int8)
    weight_host = host(weight, torch.uint8)  # bound: the native call reads it by address
    _native.unpack_hf_bitnet(weight_host.data_ptr(), 4 * quarter, cols, out.data_ptr())
    return out.to(weight.device), s
