"""Functional API on torch tensors: the ternary (and INT2) linear product, and the old
project's ``gemv``.

The routes live beside it: ``_cpu.py`` (native CPU kernels) and ``_cuda.py`` (GPU layout,
planner route, kernels or cuBLAS); packing in ``packing.py`` and the quantizers in
``quantizers.py`` (both run the Rust crate's code through ``_native``). Their names stay
importable from here. Eager calls take a fast path: the first call with a given weight
version and argument signature (shapes, types, devices, the scale's and bias's addresses and
versions) runs every check and keeps a runner in the layout cache (``_layouts``); the next
calls compare the signature and run it (one native call).
"""

from __future__ import annotations

import torch

from . import _cpu, _layouts
from ._checks import PaddingError, check_tensor

# The CUDA path moved to _cuda.py, the packers and quantizers to packing.py and quantizers.py
# (F401: their names stay importable from here).
from ._cuda import (  # noqa: F401
    _linear_dense,
    _linear_t2,
    _prepared,
    _runner,
    _t2_of,
    _w2a8_epilogue,
    dense_path,
    one_launch,
)
from .packing import (  # noqa: F401
    LINEAR_CLASSES,
    check_words,
    pack_int2,
    pack_ternary,
    unpack_hf_bitnet,
    unpack_int2,
    unpack_ternary,
    validate_packed,
)
from .quantizers import (  # noqa: F401
    ACT_EPS,
    INT2_METHODS,
    WEIGHT_EPS,
    _quantize_rows,
    quantize_activations_int8,
    quantize_int2,
    quantize_ternary,
)


def _check_x(x, n: int, weight: torch.Tensor, weight_name: str) -> None:
    """Checks the input of a linear layer with ``n`` input features and weights ``weight``.
    An empty batch (``x`` of shape ``[..., 0, n]``) is valid, as for ``F.linear``."""
    check_tensor("x", x, empty_ok=True)
    if x.dim() == 0:
        raise ValueError("`x` must have at least one dimension (its features), got a 0-D tensor")
    if not x.is_floating_point():
        raise TypeError(f"`x` must be a float tensor, got {x.dtype}")
    if x.shape[-1] != n:
        raise ValueError(f"`x` has {x.shape[-1]} features, `{weight_name}` has {n} columns (in_features)")
    if x.device != weight.device:
        raise ValueError(f"`{weight_name}` is on {weight.device}, `x` on {x.device}")


def _feature_error(e: PaddingError, n: int, in_features: int | None) -> ValueError:
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
    check_tensor("x", x, empty_ok=True)
    check_tensor("packed_weight", packed_weight, 2)
    if in_features is None and x.dim() > 0 and not torch.compiler.is_compiling():
        in_features = _layouts.recorded_columns(packed_weight)
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
            check_tensor(name, t)
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
    except PaddingError as e:
        raise _feature_error(e, n, in_features) from None


def _validated_levels(packed: torch.Tensor, n: int, in_features: int | None, levels: str) -> torch.Tensor:
    """The float32 levels ``[M, n]`` of validated words (CPU paths), padding past the columns
    of ``x`` reported as a feature-count mismatch."""
    try:
        if levels == "int2":
            return unpack_int2(packed, n)
        return unpack_ternary(packed, n).to(torch.float32)
    except PaddingError as e:
        raise _feature_error(e, n, in_features) from None


def _cpu_linear(x, packed_weight, scale, bias, n: int, levels: str, quantize: bool, sink) -> torch.Tensor | None:
    """The fast CPU kernels where they apply (their runner goes to ``sink``), else None. Words
    whose padding is not zero go to the PyTorch path instead, whose check names the feature
    count (the native conversion can only name the padding)."""
    if not _cpu.applies(x, scale, bias):
        return None
    try:
        run = _cpu.runner(x, packed_weight, scale, bias, n, levels, quantize)
    except ValueError as e:
        if "padding" not in str(e):
            raise
        return None
    if sink is not None:
        sink.append(run)
    return run(x)


def _x_stamp(x: torch.Tensor) -> tuple:
    """What the fast path compares of the activations each call (not their address)."""
    return (x.dtype, x.shape, x.get_device(), x.is_contiguous(), x.requires_grad)


def _arg_stamp(t) -> tuple:
    """What the fast path compares of a scale or bias each call: a tensor's address, version,
    type, shape, device and autograd flag; a Python number's type and value."""
    if t is None or type(t) in (int, float):
        return (type(t), t)
    return (t.data_ptr(), t._version, t.dtype, t.shape, t.get_device(), t.requires_grad)


def _linear_stamp(x, packed_weight, scale, bias, in_features, quantize_activations) -> tuple | None:
    """The signature of an eager ``linear`` call, else None (under torch.compile, or where an
    argument is not a tensor: the full checks name it)."""
    if torch.compiler.is_compiling():
        return None
    try:
        return (
            packed_weight._version, packed_weight.data_ptr(), packed_weight.shape, _x_stamp(x),
            _arg_stamp(scale), _arg_stamp(bias), in_features, quantize_activations,
        )  # fmt: skip
    except AttributeError:
        return None


def _linear_fast(x, packed_weight, scale, bias, in_features, quantize_activations, kind="linear"):
    """``(y, stamp)``: ``y`` from the runner planned for this call's signature, or None (then
    ``stamp`` is what a runner made by the full path is to be kept under)."""
    stamp = _linear_stamp(x, packed_weight, scale, bias, in_features, quantize_activations)
    run = None if stamp is None else _layouts.runner(packed_weight, kind, stamp)
    return (None if run is None else run(x)), stamp


def _keep(packed_weight, kind: str, stamp, sink) -> None:
    """Keeps the runner a full call left in ``sink`` for the next calls of ``stamp``."""
    if sink:
        _layouts.keep_runner(packed_weight, kind, stamp, sink[0])


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
    y, stamp = _linear_fast(x, packed_weight, scale, bias, in_features, quantize_activations)
    if y is not None:
        return y
    sink: list | None = None if stamp is None else []
    y = _linear(x, packed_weight, scale, bias, in_features, quantize_activations, sink)
    _keep(packed_weight, "linear", stamp, sink)
    return y


def _linear(x, packed_weight, scale, bias, in_features, quantize_activations, sink) -> torch.Tensor:
    """``linear`` with every check; a runner for the next calls of this signature goes to
    ``sink`` where the call took one."""
    n, m, scale = _check_linear_args(x, packed_weight, scale, bias, in_features)
    if x.numel() == 0:
        return x.new_zeros((*x.shape[:-1], m))
    if x.is_cuda:
        t2 = _validated_t2(packed_weight, n, in_features)
        return _linear_t2(x, t2, m, scale, bias, quantize_activations, i2=packed_weight.contiguous(), sink=sink)
    y = _cpu_linear(x, packed_weight, scale, bias, n, "ternary", quantize_activations, sink)
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


def gemv(W_packed: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> None:
    """The old project's ``gemv(W_packed, X, Y)``: ``Y = W X`` written in place.

    Args:
        W_packed: int32 I2 words ``[M, N / 16]``.
        X: ``[N]`` float16 or bfloat16 vector (CUDA) or any float (CPU).
        Y: ``[M]`` output, same dtype and device as ``X``.
    """
    _gemv(W_packed, X, Y, "ternary")


def _gemv(W_packed: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, levels: str) -> None:
    """``gemv`` / ``gemv_int2``: the runner kept for this call's signature where there is one,
    else every check, then one kernel writing straight into ``Y`` where it applies, else
    ``linear`` and a copy."""
    kind = "gemv" if levels == "ternary" else "gemv_int2"
    stamp = _gemv_stamp(W_packed, X, Y)
    run = None if stamp is None else _layouts.runner(W_packed, kind, stamp)
    if run is not None:
        run(X, Y)
        return
    _check_gemv_args(W_packed, X, Y)
    sink: list | None = None if stamp is None else []
    if _gemv_in_place(W_packed, X, Y, levels, sink):
        _keep(W_packed, kind, stamp, sink)
        return
    lin = linear if levels == "ternary" else linear_int2
    Y.copy_(lin(X.unsqueeze(0), W_packed, in_features=X.shape[0]).squeeze(0))


def _gemv_stamp(W_packed, X, Y) -> tuple | None:
    """The signature of an eager ``gemv`` call (as ``_linear_stamp``)."""
    if torch.compiler.is_compiling():
        return None
    try:
        return (
            W_packed._version, W_packed.data_ptr(), W_packed.shape, _x_stamp(X), Y.dtype, Y.shape, Y.get_device(),
            Y.is_contiguous(),
        )  # fmt: skip
    except AttributeError:
        return None


def _gemv_in_place(
    W_packed: torch.Tensor, X: torch.Tensor, Y: torch.Tensor, levels: str = "ternary", sink: list | None = None
) -> bool:
    """The eager fast path of ``gemv``: one kernel writing straight into ``Y`` (no output
    tensor, no copy), its runner to ``sink``. False where it does not apply (other dtypes,
    strided tensors, a gradient wanted, torch.compile); then ``linear`` runs."""
    if _cpu.applies(X) and X.dtype == Y.dtype == torch.float32 and X.is_contiguous() and Y.is_contiguous():
        try:
            run = _cpu.runner(X, W_packed, None, None, X.shape[0], levels, into=True)
        except ValueError as e:  # words with padding: linear's check names the feature count
            if "padding" not in str(e):
                raise
            return False
        if sink is not None:
            sink.append(run)
        run(X, Y)
        return True
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
    plan = _prepared(t2, m, n, None, None, X.unsqueeze(0), levels, False)
    if plan is None:  # one token never needs per-call work; kept for safety of the contract
        return False
    run = _runner(plan, X, t2)
    if sink is not None:
        sink.append(run)
    run(X, Y)
    return True


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
    y, stamp = _linear_fast(x, packed_weight, scale, bias, in_features, False, "linear_int2")
    if y is not None:
        return y
    sink: list | None = None if stamp is None else []
    y = _linear_int2(x, packed_weight, scale, bias, in_features, sink)
    _keep(packed_weight, "linear_int2", stamp, sink)
    return y


def _linear_int2(x, packed_weight, scale, bias, in_features, sink) -> torch.Tensor:
    """``linear_int2`` with every check (as ``_linear``)."""
    n, m, scale = _check_linear_args(x, packed_weight, scale, bias, in_features)
    if x.numel() == 0:
        return x.new_zeros((*x.shape[:-1], m))
    if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
        t2 = _validated_t2(packed_weight, n, in_features, "int2")
        return _linear_t2(x, t2, m, scale, bias, False, "int2", i2=packed_weight.contiguous(), sink=sink)
    y = _cpu_linear(x, packed_weight, scale, bias, n, "int2", False, sink)
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
    check_tensor("W_packed", W_packed, 2)
    check_tensor("X", X, 1)
    check_tensor("Y", Y, 1)
    if Y.dtype != X.dtype or Y.device != X.device:
        raise ValueError(f"`Y` must match `X` ({X.dtype} on {X.device}), got {Y.dtype} on {Y.device}")
    if Y.shape[0] != W_packed.shape[0]:
        raise ValueError(f"`Y` has {Y.shape[0]} elements, the weight has {W_packed.shape[0]} rows")
    if X.shape[0] > W_packed.shape[1] * 16:
        raise ValueError(f"`X` has {X.shape[0]} elements, the weight holds {W_packed.shape[1] * 16} columns")


def gemv_int2(W_packed: torch.Tensor, X: torch.Tensor, Y: torch.Tensor) -> None:
    """The old project's ``gemv_int2(W_packed, X, Y)``: ``Y = L X`` for INT2 levels ``L``, in place."""
    _gemv(W_packed, X, Y, "int2")


def gemv_int2_scaled(W_packed: torch.Tensor, X: torch.Tensor, scales: torch.Tensor, Y: torch.Tensor) -> None:
    """The old project's ``gemv_int2_scaled(W_packed, X, scales, Y)``: ``Y = (L X) * scales``
    with one scale per row, in place."""
    _check_gemv_args(W_packed, X, Y)
    check_tensor("scales", scales, 1)
    if scales.shape[0] != W_packed.shape[0]:
        raise ValueError(f"`scales` has {scales.shape[0]} elements, the weight has {W_packed.shape[0]} rows")
    Y.copy_(linear_int2(X.unsqueeze(0), W_packed, scales, in_features=X.shape[0]).squeeze(0))
