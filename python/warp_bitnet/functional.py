"""Functional API on torch tensors: packing, quantization and the ternary linear product.

Packed weights use the I2 layout (docs/FORMATS.md): an int32 tensor ``[M, ceil(N / 16)]``
with weight ``k`` of a word at bits ``2k .. 2k+1``, codes ``00 -> 0``, ``01 -> +1``,
``10 -> -1``; bit-identical to the old project's ``pack_ternary``. Rounding is
round-half-to-even (``torch.round``) everywhere, as in the Rust crate.
"""

from __future__ import annotations

import functools
import weakref

import torch

from . import _cpu, _native, ops

WEIGHT_EPS = 1e-5
ACT_EPS = 1e-5
_SHIFTS = torch.arange(0, 32, 2, dtype=torch.int64)


def _check_tensor(name: str, t, dims: int | None = None, empty_ok: bool = False) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"`{name}` must be {dims}-D, got shape {tuple(t.shape)}")
    if t.numel() == 0 and not empty_ok:
        raise ValueError(f"`{name}` is empty (shape {tuple(t.shape)})")


class _PaddingError(ValueError):
    """Non-zero weights past the column count a caller gave (``row``, ``col``)."""

    def __init__(self, message: str, row: int, col: int):
        super().__init__(message)
        self.row, self.col = row, col


# id(words) -> (weak reference to the words, N): the column count of the words made by the
# packers here, so that `linear` without `in_features` can tell a wrong feature count of `x`
# (I2 words hold up to 15 columns of padding, so their shape cannot).
_COLUMNS: dict[int, tuple] = {}


def _record_columns(words: torch.Tensor, n: int) -> torch.Tensor:
    key = id(words)
    _COLUMNS[key] = (weakref.ref(words, lambda _, key=key: _COLUMNS.pop(key, None)), n)
    return words


def _recorded_columns(words: torch.Tensor) -> int | None:
    hit = _COLUMNS.get(id(words))
    return hit[1] if hit is not None and hit[0]() is words else None


def pack_ternary(W: torch.Tensor) -> torch.Tensor:
    """Packs a ``[M, N]`` tensor of -1, 0, +1 into I2 words.

    Args:
        W: weights in {-1, 0, +1}, any real or integer dtype, any device.

    Returns:
        int32 tensor ``[M, ceil(N / 16)]`` on ``W``'s device; columns past ``N`` are zero weights.
    """
    _check_tensor("W", W, 2)
    if W.is_floating_point() and not torch.isfinite(W).all():
        raise ValueError("`W` holds NaN or infinity")
    if not ((W == 0) | (W == 1) | (W == -1)).all():
        raise ValueError("`W` must hold only -1, 0 and +1 (quantize it with quantize_ternary)")
    return _words_of_codes(torch.where(W == 1, 1, torch.where(W == -1, 2, 0)).to(torch.int64))


def _words_of_codes(codes: torch.Tensor) -> torch.Tensor:
    """int64 2-bit codes ``[M, N]`` -> int32 words ``[M, ceil(N / 16)]``, code ``k`` of a word at
    bits ``2k .. 2k+1``, padding code 0 (the I2 and INT2 word layout)."""
    m, n = codes.shape
    words = (n + 15) // 16
    padded = torch.zeros(m, words * 16, dtype=torch.int64, device=codes.device)
    padded[:, :n] = codes
    packed = (padded.view(m, words, 16) << _SHIFTS.to(codes.device)).sum(-1)
    # Reinterpret the u32 words as int32 (two's complement), like the old packer.
    return _record_columns(torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32), n)


def _codes(packed: torch.Tensor) -> torch.Tensor:
    words = packed.to(torch.int64) & 0xFFFFFFFF
    return (words.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 3


def _word_codes(packed: torch.Tensor, n: int, layout: str) -> torch.Tensor:
    """The codes ``[M, 16 * words]`` of int32 words that hold ``n`` columns per row."""
    _check_tensor("packed", packed, 2)
    if packed.dtype != torch.int32:
        raise TypeError(f"`packed` must be int32 ({layout} words), got {packed.dtype}")
    m, words = packed.shape
    if not (words - 1) * 16 < n <= words * 16:
        raise ValueError(f"`packed` has {words} words per row, which cannot hold N = {n} columns")
    return _codes(packed).reshape(m, words * 16)


def _check_padding(codes: torch.Tensor, n: int, zero: str) -> None:
    pad = (codes[:, n:] != 0).nonzero()
    if len(pad):
        r, c = pad[0].tolist()
        raise _PaddingError(f"padding at row {r}, column {n + c} is not {zero}", r, n + c)


def validate_packed(packed: torch.Tensor, n: int) -> None:
    """Raises ValueError naming the first invalid code (``0b11``) or non-zero padding."""
    codes = _word_codes(packed, n, "I2")
    bad = (codes == 3).nonzero()
    if len(bad):
        r, c = bad[0].tolist()
        raise ValueError(f"invalid 2-bit code 0b11 at row {r}, column {c}")
    _check_padding(codes, n, "the zero code")


def unpack_ternary(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Unpacks validated I2 words to an int8 ``[M, n]`` tensor of -1, 0, +1."""
    validate_packed(packed, n)
    codes = _codes(packed).reshape(packed.shape[0], -1)[:, :n]
    return ((codes & 1) - ((codes >> 1) & 1)).to(torch.int8)


LINEAR_CLASSES = ("autobitlinear", "bitlinear")


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
    _check_tensor("weight", weight, 2)
    if weight.dtype != torch.uint8:
        raise TypeError(f"`weight` must be uint8 (4 codes per byte), got {weight.dtype}")
    if linear_class not in LINEAR_CLASSES:
        raise ValueError(f'`linear_class` must be "autobitlinear" or "bitlinear", got {linear_class!r}')
    s = torch.as_tensor(weight_scale, dtype=torch.float32).detach().cpu()
    if s.numel() != 1:
        raise ValueError(f"`weight_scale` must hold one value, got shape {tuple(s.shape)}")
    s = s.reshape(())
    if linear_class == "bitlinear":
        s = _div(1.0, s)
    if not torch.isfinite(s):
        raise ValueError(f"the weight scale is not finite ({s.item()}); a zero `weight_scale` with bitlinear?")
    shifts = torch.arange(0, 8, 2, dtype=torch.uint8, device=weight.device)
    codes = (weight.unsqueeze(0) >> shifts[:, None, None]) & 3  # [4, out / 4, in], row i * out / 4 + p
    codes = codes.reshape(-1, weight.shape[1])
    bad = (codes == 3).nonzero()
    if len(bad):
        r, c = bad[0].tolist()
        raise ValueError(f"invalid 2-bit code 0b11 at row {r}, column {c}")
    return codes.to(torch.int8) - 1, s


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
    _check_tensor("W", W, 2)
    if not W.is_floating_point():
        raise TypeError(f"`W` must be a float tensor, got {W.dtype}")
    w = W.detach().to(torch.float32)
    if not torch.isfinite(w).all():
        raise ValueError("`W` holds NaN or infinity")
    scale = _weight_scale(w, method)
    q = (w / scale).round().clamp(-1, 1)
    return pack_ternary(q), scale.reshape(-1) if method == "absmean_row" else scale


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


def quantize_activations_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token (last dimension) absmax int8 quantization.

    ``s = 127 / max(max|x|, 1e-5)``, ``q = clamp(round(x * s), -128, 127)``, ``scale = 1 / s``.

    Returns:
        ``(q, scale)``: int8 tensor shaped like ``x`` and float32 ``scale`` of shape
        ``x.shape[:-1]``; ``x ~= q * scale[..., None]``.
    """
    _check_tensor("x", x)
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a float tensor, got {x.dtype}")
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
        flat = x.reshape(-1, x.shape[-1])
        q, scale = ops.eager(ops.quantize_i8)(flat)
        return q.reshape(x.shape), scale.reshape(x.shape[:-1])
    xf = x.detach().to(torch.float32)
    if not torch.isfinite(xf).all():
        raise ValueError("`x` holds NaN or infinity")
    return _quantize_rows(xf)


def _quantize_rows(xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``quantize_activations_int8`` of float32 ``xf`` without its checks (no host sync)."""
    s = _div(127.0, xf.abs().amax(dim=-1, keepdim=True).clamp(min=ACT_EPS))
    return (xf * s).round().clamp(-128, 127).to(torch.int8), _div(1.0, s).squeeze(-1)


def _w2a8_epilogue(acc, qs, s, bias, levels) -> torch.Tensor:
    """int32 sums ``[B, M]`` -> float32 in the kernels' order: sum (x 0.5 for INT2, whose
    sums are twice the level sums) x activation scale ``qs[B]`` x weight scale + bias."""
    y = acc.to(torch.float32)
    if levels == "int2":
        y = y * 0.5
    y = y * qs[:, None]
    if s is not None:
        y = y * s
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y


def _div(a: float, t: torch.Tensor) -> torch.Tensor:
    """``a / t`` correctly rounded. (``a / t`` with a Python scalar ``a`` is computed by
    PyTorch as ``t.reciprocal() * a``, one rounding more, which moves q by one in rare
    ties; the CUDA kernel and the Rust quantizer divide.)"""
    return torch.full_like(t, a) / t


# id(packed) -> (weak reference to packed, (version, n), T2 tensor); an entry leaves
# when its tensor dies. (A WeakKeyDictionary would compare tensors with ==.)
_T2: dict[int, tuple] = {}


def _t2_of(packed: torch.Tensor, n: int, levels: str = "ternary") -> torch.Tensor:
    """The GPU layout of I2 words on a CUDA device. Eagerly it is converted once per
    tensor version and cached (so a captured CUDA graph replays only the GEMM); under
    torch.compile the conversion is an op of the graph."""
    if torch.compiler.is_compiling():
        return ops.to_t2(packed.contiguous(), n, levels)
    key = id(packed)
    hit = _T2.get(key)
    if hit is not None and hit[0]() is packed and hit[1] == (packed._version, n, levels):
        return hit[2]
    if levels == "ternary":
        validate_packed(packed, n)
    else:
        _check_padding(_word_codes(packed, n, "INT2"), n, "code 0")
    t2 = ops.eager(ops.to_t2)(packed.contiguous(), n, levels)
    _T2[key] = (weakref.ref(packed, lambda _, key=key: _T2.pop(key, None)), (packed._version, n, levels), t2)
    return t2


def _check_x(x, n: int, weight: torch.Tensor, weight_name: str) -> None:
    """Checks the input of a linear layer with ``n`` input features and weights ``weight``.
    An empty batch (``x`` of shape ``[..., 0, n]``) is valid, as for ``F.linear``."""
    _check_tensor("x", x, empty_ok=True)
    if x.dim() == 0:
        raise ValueError("`x` must have at least one dimension (its features), got a 0-D tensor")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a float tensor, got {x.dtype}")
    if x.shape[-1] != n:
        raise ValueError(f"`x` has {x.shape[-1]} features, `{weight_name}` has {n} columns (in_features)")
    if x.device != weight.device:
        raise ValueError(f"`{weight_name}` is on {weight.device}, `x` on {x.device}")


def _feature_error(e: _PaddingError, n: int, in_features: int | None) -> ValueError:
    """The error of a padding check of words whose column count came from ``x``: a feature
    count that is too small, not a broken weight."""
    if in_features is not None:
        return e
    return ValueError(
        f"`x` has {n} features, but `packed_weight` holds weights in column {e.col} (row {e.row}): "
        f"the weight has more columns than `x` has features (pass in_features to name them)"
    )


def _check_linear_args(x, packed_weight, scale, bias, in_features) -> tuple[int, int, torch.Tensor | None]:
    """Checks the arguments of ``linear`` / ``linear_int2``; returns ``(N, M, scale)``, a
    Python number ``scale`` as a float32 tensor."""
    _check_tensor("x", x, empty_ok=True)
    _check_tensor("packed_weight", packed_weight, 2)
    if in_features is None and x.dim() > 0 and not torch.compiler.is_compiling():
        in_features = _recorded_columns(packed_weight)
    n = in_features if in_features is not None else (x.shape[-1] if x.dim() else 0)
    _check_x(x, n, packed_weight, "packed_weight")
    m, words = packed_weight.shape
    if not (words - 1) * 16 < n <= words * 16:
        raise ValueError(
            f"`x` has {n} features, `packed_weight` has {words} words per row, "
            f"which hold {(words - 1) * 16 + 1} to {words * 16} columns"
        )
    if isinstance(scale, (int, float)) and not isinstance(scale, bool):
        scale = torch.tensor(float(scale), dtype=torch.float32, device=x.device)
    for name, t, sizes, shapes in (
        ("scale", scale, (1, m), f"[] or [1] or [{m}]"),
        ("bias", bias, (m,), f"[{m}]"),
    ):
        if t is not None:
            _check_tensor(name, t)
            if t.device != x.device:
                raise ValueError(f"`{name}` is on {t.device}, `x` on {x.device}")
            if t.numel() not in sizes or t.dim() > 1:
                raise ValueError(f"`{name}` must have shape {shapes}, got {tuple(t.shape)}")
    return n, m, scale


def _validated_t2(packed: torch.Tensor, n: int, in_features: int | None, levels: str = "ternary") -> torch.Tensor:
    """``_t2_of``, with padding past the columns of ``x`` reported as a feature-count mismatch."""
    if torch.compiler.is_compiling():  # no validation in a graph: nothing to translate
        return _t2_of(packed, n, levels)
    try:
        return _t2_of(packed, n, levels)
    except _PaddingError as e:
        raise _feature_error(e, n, in_features) from None


def _validated_levels(packed: torch.Tensor, n: int, in_features: int | None, levels: str) -> torch.Tensor:
    """The float32 levels ``[M, n]`` of validated words (CPU paths), padding past the columns
    of ``x`` reported as a feature-count mismatch."""
    try:
        if levels == "int2":
            return unpack_int2(packed, n)
        return unpack_ternary(packed, n).to(torch.float32)
    except _PaddingError as e:
        raise _feature_error(e, n, in_features) from None


def _cpu_linear(x, packed_weight, scale, bias, n: int, levels: str, quantize: bool) -> torch.Tensor | None:
    """The fast CPU kernels where they apply, else None. Words whose padding is not zero go to
    the PyTorch path instead, whose check names the feature count (the native conversion can only
    name the padding)."""
    if not _cpu.applies(x, scale, bias):
        return None
    try:
        return _cpu.linear(x, packed_weight, scale, bias, n, levels, quantize)
    except ValueError as e:
        if "padding" not in str(e):
            raise
        return None


def linear(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    in_features: int | None = None,
    quantize_activations: bool = False,
) -> torch.Tensor:
    """``y = (x . Wtᵀ) * scale + bias`` for any leading batch dimensions.

    Args:
        x: ``[..., N]`` float16 / bfloat16 (CUDA kernels; f32 accumulation), float32 on CUDA
            with ``quantize_activations`` (exact int8 products, float32 epilogue), or any
            float on CPU.
        packed_weight: int32 I2 words ``[M, ceil(N / 16)]`` on ``x``'s device.
        scale: optional float32 weight scale, ``[]`` / ``[1]`` or ``[M]``, or a Python number.
        bias: optional ``[M]`` bias (cast to ``x``'s dtype).
        in_features: ``N``. Default: the column count of words made by ``pack_ternary`` /
            ``quantize_ternary`` in this process, else ``x.shape[-1]``; an ``x`` with another
            number of features is refused.
        quantize_activations: quantize ``x`` per token to int8 first (W2A8).

    Returns:
        ``[..., M]`` tensor in ``x``'s dtype; empty if the batch is (as ``F.linear``).
    """
    n, m, scale = _check_linear_args(x, packed_weight, scale, bias, in_features)
    if x.numel() == 0:
        return x.new_zeros((*x.shape[:-1], m))
    if x.is_cuda:
        t2 = _validated_t2(packed_weight, n, in_features)
        return _linear_t2(x, t2, m, scale, bias, quantize_activations, i2=packed_weight.contiguous())
    y = _cpu_linear(x, packed_weight, scale, bias, n, "ternary", quantize_activations)
    if y is not None:
        return y
    lead = x.shape[:-1]
    x2 = x.reshape(-1, n)
    w = _validated_levels(packed_weight, n, in_features, "ternary")
    xf = x2.to(torch.float32)
    if quantize_activations:
        q, qs = quantize_activations_int8(xf)
        y = (q.to(torch.float32) @ w.T) * qs[:, None]
    else:
        y = xf @ w.T
    if scale is not None:
        y = y * scale.to(torch.float32).reshape(1, -1)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype).reshape(*lead, m)


# One token of int8 activations is quantized inside the GEMM (one launch) when its int8 row
# fits the kernel's shared memory on every supported GPU (sm_86/89 allow the least); wider
# rows take the quantize kernel and the int8 GEMM.
ONE_LAUNCH_MAX_COLS = 32768


def dense_path(
    tokens: int, device: torch.device, rows: int, cols: int, levels: str, quantize_activations: bool
) -> bool:
    """Whether ``linear`` multiplies ``tokens`` tokens by a ``rows`` x ``cols`` matrix on CUDA
    ``device`` on cuBLAS over the decoded weights rather than on the ternary kernels: the
    route the Rust planner gives (``warp_bitnet::cuda::Gpu::route``), asked once per shape."""
    if torch.compiler.is_compiling():
        # Dynamo cannot trace into the native module, and with dynamic shapes the batch has no
        # value to ask about while tracing: compiled graphs run the kernels, right at any batch
        # (on sm_90a the route keeps them at every batch anyway).
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _route(index, rows, cols, levels, "int8" if quantize_activations else "float16", tokens) == "dense"


@functools.lru_cache(maxsize=4096)
def _route(index: int, rows: int, cols: int, levels: str, x_dtype: str, tokens: int) -> str:
    return _native.route(index, rows, cols, levels, x_dtype, tokens)


def _linear_t2(
    x: torch.Tensor,
    t2: torch.Tensor,
    m: int,
    scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    quantize_activations: bool,
    levels: str = "ternary",
    i2: torch.Tensor | None = None,
) -> torch.Tensor:
    """The CUDA path of ``linear`` (``linear_int2`` with ``levels="int2"``) on weights already
    in the GPU layout (checked by the caller). Given the I2-layout words ``i2`` too, batches
    where ``dense_path`` says so run on cuBLAS over the decoded weights (int8 products exact,
    the same epilogue)."""
    # The ops have no backward: with a gradient wanted they go through the dispatcher, whose
    # outputs then fail at backward() rather than silently lose the gradient path.
    grad = x.requires_grad and torch.is_grad_enabled()
    n = x.shape[-1]
    lead = x.shape[:-1]
    # Conversions only where needed: each torch call costs about a microsecond, and a
    # one-token GEMV takes a few.
    x2 = x if x.dim() == 2 and x.is_contiguous() else x.reshape(-1, n).contiguous()
    s = scale
    if s is not None and not (s.dtype == torch.float32 and s.dim() <= 1 and s.is_contiguous()):
        s = s.to(torch.float32).reshape(-1).contiguous()
    if (
        i2 is not None
        and x.dtype in (torch.float16, torch.bfloat16)
        and dense_path(x2.shape[0], x.device, m, n, levels, quantize_activations)
    ):
        y = _linear_dense(x2, i2, m, s, bias, quantize_activations, levels, grad)
        if y is not None:
            return y.reshape(*lead, m)
    if x.dtype == torch.float32:
        if not quantize_activations:
            raise TypeError(
                "CUDA `x` must be float16 or bfloat16 (float32 only with quantize_activations=True); cast it"
            )
        # int8 products summed exactly in int32, then the epilogue in float32.
        q, qs = _quantize_rows(x2)
        acc = ops.eager(ops.gemm_i8, grad)(t2, m, n, None, q, qs, None, torch.int32, levels)
        return _w2a8_epilogue(acc, qs, s, bias, levels).reshape(*lead, m)
    if x.dtype not in (torch.float16, torch.bfloat16):
        raise TypeError(f"CUDA `x` must be float16, bfloat16 or float32, got {x.dtype}")
    b = None if bias is None else bias.to(x.dtype).contiguous()
    one_launch = quantize_activations and x2.shape[0] == 1 and n <= ONE_LAUNCH_MAX_COLS  # the kernel quantizes x
    if not grad and (one_launch or not quantize_activations) and not torch.compiler.is_compiling():
        y = _gemm_prepared(t2, m, n, s, x2, b, bias, levels, one_launch)
        if y is not None:
            return y if x.dim() == 2 else y.reshape(*lead, m)
    if one_launch:
        y = ops.eager(ops.gemm, grad)(t2, m, n, s, x2, b, levels, True)
    elif quantize_activations:
        q, qs = ops.eager(ops.quantize_i8, grad)(x2)
        y = ops.eager(ops.gemm_i8, grad)(t2, m, n, s, q, qs, b, x.dtype, levels)
    else:
        y = ops.eager(ops.gemm, grad)(t2, m, n, s, x2, b, levels)
    return y if x.dim() == 2 else y.reshape(*lead, m)


# (device, T2 words, scale, bias addresses; shapes, types, batch) -> the native plan of that
# GEMM, or None where it needs per-call work. A plan holds addresses, not values: an entry
# stays right for whatever tensors later live at those addresses with those shapes.
_PREPARED: dict[tuple, object] = {}
_PREPARED_MAX = 4096


def _gemm_prepared(t2, m, n, s, x2, b, bias, levels, quantize_x) -> torch.Tensor | None:
    """The eager fast path of a CUDA GEMM: the kernel planned once per shape, batch and buffers
    (``_native.prepare_gemm``, checks included), then one native launch per call that passes
    only ``x`` and ``y``. None where it does not apply: a bias converted for this call (its
    address would change every call), or a GEMM the planner gives per-call work."""
    if bias is not None and b is not bias:
        return None
    batch = x2.shape[0]
    key = (x2.device.index, t2.data_ptr(), m, n, levels, ops._ptr(s), ops._ptr(b), x2.dtype, batch, quantize_x)
    plan = _PREPARED.get(key, _PREPARED)
    if plan is _PREPARED:
        # The checks of ops.gemm, once per key.
        ops._cuda_contiguous("t2", t2, x2.device)
        per_row = ops._check_scale(s, m, x2.device)
        ops._check_bias(b, x2.dtype, m, x2.device)
        if len(_PREPARED) >= _PREPARED_MAX:
            _PREPARED.clear()
        dt = ops._dtype_name(x2.dtype)
        plan = _native.prepare_gemm(
            x2.device.index, t2.data_ptr(), levels, m, n, ops._ptr(s), per_row, dt, n, dt, m, batch,
            ops._ptr(b), 0, quantize_x,
        )  # fmt: skip
        _PREPARED[key] = plan
    if plan is None:
        return None
    y = torch.empty(batch, m, dtype=x2.dtype, device=x2.device)
    plan.launch(x2.data_ptr(), y.data_ptr(), ops._stream(x2))
    return y


def _linear_dense(x2, i2, m, s, bias, quantize_activations, levels, grad) -> torch.Tensor | None:
    """Large batches: decode the weights to a dense matrix and multiply on cuBLAS.

    int8 activations go through ``torch._int_mm`` (exact int32 sums), then the kernels' epilogue
    in one pass (``ops.w2a8_epilogue``: the same bytes as the kernels); None where it does not
    apply (dimensions not multiples of 8). f16/bf16 activations multiply dense weights decoded
    with the scale folded in (``W * scale`` rounded once to the activation type, as a dense
    model holds them) and the bias in cuBLAS's epilogue: f32 accumulation, one rounding of the
    output, and no unscaled intermediate that could overflow f16."""
    n = x2.shape[1]
    dense = ops.eager(ops.i2_to_dense, grad)
    b = None if bias is None else bias.to(x2.dtype).contiguous()
    if not quantize_activations:
        return torch.nn.functional.linear(x2, dense(i2, n, levels, x2.dtype, s), b)
    if n % 8 or m % 8:
        return None
    q, qs = ops.eager(ops.quantize_i8, grad)(x2)
    acc = torch._int_mm(q, dense(i2, n, levels, torch.int8).T)
    return ops.eager(ops.w2a8_epilogue, grad)(acc, qs, s, b, x2.dtype, levels)


def gemv(W_packed: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> None:
    """The old project's ``gemv(W_packed, X, Y)``: ``Y = W X`` written in place.

    Args:
        W_packed: int32 I2 words ``[M, N / 16]``.
        X: ``[N]`` float16 or bfloat16 vector (CUDA) or any float (CPU).
        Y: ``[M]`` output, same dtype and device as ``X``.
    """
    _check_gemv_args(W_packed, X, Y)
    if not _gemv_in_place(W_packed, X, Y):
        Y.copy_(linear(X.unsqueeze(0), W_packed, in_features=X.shape[0]).squeeze(0))


def _gemv_in_place(W_packed: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, levels: str = "ternary") -> bool:
    """The eager CUDA fast path of ``gemv``: one kernel writing straight into ``Y`` (no
    output tensor, no copy). False where it does not apply (CPU, other dtypes, strided
    tensors, a gradient wanted, torch.compile); then ``linear`` runs."""
    if not (
        X.is_cuda
        and X.dtype in (torch.float16, torch.bfloat16)
        and X.is_contiguous()
        and Y.is_contiguous()
        and W_packed.device == X.device
        and not (X.requires_grad and torch.is_grad_enabled())
        and not torch.compiler.is_compiling()
    ):
        return False
    n, m = X.shape[0], W_packed.shape[0]
    t2 = _t2_of(W_packed, n, levels)
    dt = ops._dtype_name(X.dtype)
    _native.gemm(
        X.device.index, t2.data_ptr(), levels, m, n, 0, False, X.data_ptr(), dt, n,
        Y.data_ptr(), dt, m, 1, 0, 0, False, ops._stream(X),
    )  # fmt: skip
    return True


# INT2: four levels {-1.5, -0.5, +0.5, +1.5}, code c -> c - 1.5, in the I2 word layout
# (docs/FORMATS.md, "INT2"). float16 / bfloat16 CUDA activations run the INT2 kernels.

INT2_METHODS = ("mse", "absmax")
_INT2_MAX_ROUNDS = 100


def pack_int2(W: torch.Tensor) -> torch.Tensor:
    """Packs a ``[M, N]`` tensor of INT2 weights into words (int32 ``[M, ceil(N / 16)]``;
    padding holds code 0).

    Args:
        W: float levels -1.5, -0.5, +0.5, +1.5, or integer codes 0, 1, 2, 3 (code ``c`` is
            level ``c - 1.5``; integer tensors cannot hold the half levels, so they are read
            as codes, which is what ``unpack_int2(...) + 1.5`` gives back).
    """
    _check_tensor("W", W, 2)
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
    return _words_of_codes(codes.to(torch.int64))


def unpack_int2(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Unpacks INT2 words to float32 levels ``[M, n]``; raises ValueError on non-zero padding."""
    codes = _word_codes(packed, n, "INT2")
    _check_padding(codes, n, "code 0")
    return codes[:, :n].to(torch.float32) - 1.5


def _nearest_int2_codes(v: torch.Tensor) -> torch.Tensor:
    return (v.floor() + 2).clamp(0, 3)


def quantize_int2(W: torch.Tensor, method: str = "mse") -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes dense weights to INT2 levels with one scale per row and packs them.

    A weight takes the level nearest ``W / s`` (``c = clamp(floor(W / s) + 2, 0, 3)``).
    ``method="absmax"``: ``s = max(max|W_row|, 1e-5) / 1.5``. ``"mse"`` (default): the ``s``
    minimizing the row's squared error, by Lloyd rounds from the absmax start (levels for ``s``,
    then ``s = sum(W * level) / sum(level^2)``) until no level changes (at most 100); the
    same as the Rust quantizer, docs/FORMATS.md "INT2".

    Returns:
        ``(packed, scale)``: int32 INT2 words and float32 ``[M]``; ``W ~= unpack_int2(packed) * scale[:, None]``.
    """
    _check_tensor("W", W, 2)
    if not W.is_floating_point():
        raise TypeError(f"`W` must be a float tensor, got {W.dtype}")
    if method not in INT2_METHODS:
        raise ValueError(f'`method` must be "mse" or "absmax", got {method!r}')
    w = W.detach().to(torch.float32)
    if not torch.isfinite(w).all():
        raise ValueError("`W` holds NaN or infinity")
    floor = WEIGHT_EPS / 1.5
    s = (w.abs().amax(dim=1) / 1.5).clamp(min=floor)
    codes = _nearest_int2_codes(w / s[:, None])
    if method == "mse":
        # Every row runs its rounds independently: a settled row keeps its scale.
        active = torch.ones(w.shape[0], dtype=torch.bool, device=w.device)
        w64 = w.to(torch.float64)
        for _ in range(_INT2_MAX_ROUNDS):
            levels = codes.to(torch.float64) - 1.5
            fit = ((w64 * levels).sum(1) / (levels * levels).sum(1)).to(torch.float32).clamp(min=floor)
            s = torch.where(active, fit, s)
            new = _nearest_int2_codes(w / s[:, None])
            changed = (new != codes).any(dim=1) & active
            codes = torch.where(active[:, None], new, codes)
            active = changed
            if not active.any():
                break
    return _words_of_codes(codes.to(torch.int64)), s


def linear_int2(
    x: torch.Tensor,
    packed_weight: torch.Tensor,
    scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    in_features: int | None = None,
) -> torch.Tensor:
    """``y = (x . Lᵀ) * scale + bias`` for INT2 weights ``L`` (levels), float32 accumulation.

    ``scale`` is ``[]``, ``[1]`` or ``[M]`` (or a Python number); ``x`` is ``[..., N]``:
    float16 / bfloat16 on CUDA run the INT2 kernels; other floats (and CPU tensors) run
    PyTorch ops. ``in_features`` as in ``linear``; an empty batch gives an empty output.
    """
    n, m, scale = _check_linear_args(x, packed_weight, scale, bias, in_features)
    if x.numel() == 0:
        return x.new_zeros((*x.shape[:-1], m))
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
        t2 = _validated_t2(packed_weight, n, in_features, "int2")
        return _linear_t2(x, t2, m, scale, bias, False, "int2", i2=packed_weight.contiguous())
    y = _cpu_linear(x, packed_weight, scale, bias, n, "int2", False)
    if y is not None:
        return y
    levels = _validated_levels(packed_weight, n, in_features, "int2")
    y = x.reshape(-1, n).to(torch.float32) @ levels.T
    if scale is not None:
        y = y * scale.to(torch.float32).reshape(1, -1)
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype).reshape(*x.shape[:-1], m)


def _check_gemv_args(W_packed: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> None:
    _check_tensor("W_packed", W_packed, 2)
    _check_tensor("X", X, 1)
    _check_tensor("Y", Y, 1)
    if Y.dtype != X.dtype or Y.device != X.device:
        raise ValueError(f"`Y` must match `X` ({X.dtype} on {X.device}), got {Y.dtype} on {Y.device}")
    if Y.shape[0] != W_packed.shape[0]:
        raise ValueError(f"`Y` has {Y.shape[0]} elements, the weight has {W_packed.shape[0]} rows")
    if X.shape[0] > W_packed.shape[1] * 16:
        raise ValueError(f"`X` has {X.shape[0]} elements, the weight holds {W_packed.shape[1] * 16} columns")


def gemv_int2(W_packed: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> None:
    """The old project's ``gemv_int2(W_packed, X, Y)``: ``Y = L X`` for INT2 levels ``L``, in place."""
    _check_gemv_args(W_packed, X, Y)
    if not _gemv_in_place(W_packed, X, Y, "int2"):
        Y.copy_(linear_int2(X.unsqueeze(0), W_packed, in_features=X.shape[0]).squeeze(0))


def gemv_int2_scaled(W_packed: torch.Tensor, X: torch.Tensor, scales: torch.Tensor, Y: torch.Tensor) -> None:
    """The old project's ``gemv_int2_scaled(W_packed, X, scales, Y)``: ``Y = (L X) * scales``
    with one scale per row, in place."""
    _check_gemv_args(W_packed, X, Y)
    _check_tensor("scales", scales, 1)
    if scales.shape[0] != W_packed.shape[0]:
        raise ValueError(f"`scales` has {scales.shape[0]} elements, the weight has {W_packed.shape[0]} rows")
    Y.copy_(linear_int2(X.unsqueeze(0), W_packed, scales, in_features=X.shape[0]).squeeze(0))
