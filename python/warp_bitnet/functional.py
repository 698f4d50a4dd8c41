"""Functional API on torch tensors: the ternary (and INT2) linear product, and the old
project's ``gemv``.

Packing lives in ``packing.py`` and the quantizers in ``quantizers.py`` (both run the Rust
crate's code through ``_native``); their public names are importable from here too. Eager
calls take a fast path (``_FAST``): the first call with a given weight version, argument
signature and shapes runs every check and plans the GEMM; the next ones check only that
signature and launch (one native call).
"""

from __future__ import annotations

import functools

import torch

from . import _cpu, _layouts, _native, ops
from ._checks import PaddingError, check_tensor

# The packers and quantizers moved out (F401: their public names stay importable from here).
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


def _w2a8_epilogue(acc, qs, s, bias, levels) -> torch.Tensor:
    """int32 sums ``[B, M]`` -> float32 in the kernels' order: sum (x 0.5 for INT2, whose
    sums are twice the level sums) x activation scale ``qs[B]`` x weight scale + bias. The
    PyTorch twin of the native epilogue (the float32 CUDA path needs it on the device);
    python/tests/test_conformance.py checks it against the CPU kernels bit for bit."""
    y = acc.to(torch.float32)
    if levels == "int2":
        y = y * 0.5
    y = y * qs[:, None]
    if s is not None:
        y = y * s
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y


def _t2_of(packed: torch.Tensor, n: int, levels: str = "ternary", fresh: bool = False) -> torch.Tensor:
    """The GPU layout of I2 words on a CUDA device. Eagerly it is converted once per
    tensor version (``fresh``: again) and kept in the one layout cache (``_layouts``), so a
    captured CUDA graph replays only the GEMM; under torch.compile the conversion is an op of
    the graph."""
    if torch.compiler.is_compiling():
        return ops.to_t2(packed.contiguous(), n, levels)
    stamp = (packed._version, n, levels)
    t2 = None if fresh else _layouts.get(packed, "t2", stamp)
    if t2 is None:
        check_words(packed, n, levels)
        t2 = _layouts.put(packed, "t2", stamp, ops.eager(ops.to_t2)(packed.contiguous(), n, levels))
    return t2


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
            packed_weight._version, packed_weight.data_ptr(), _x_stamp(x), _arg_stamp(scale), _arg_stamp(bias),
            in_features, quantize_activations,
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
    sink: list | None = None,
) -> torch.Tensor:
    """The CUDA path of ``linear`` (``linear_int2`` with ``levels="int2"``) on weights already
    in the GPU layout (checked by the caller). Given the I2-layout words ``i2`` too, batches
    where ``dense_path`` says so run on cuBLAS over the decoded weights (int8 products exact,
    the same epilogue). Where one planned kernel serves the call, its runner goes to ``sink``."""
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
    if not grad and (one_launch or not quantize_activations) and not torch.compiler.is_compiling() and b is bias:
        plan = _prepared(t2, m, n, s, b, x2, levels, one_launch)
        if plan is not None:
            run = _runner(plan, x2, t2, s, b, out=(*lead, m))
            if sink is not None and x.is_contiguous():  # then x2 is a view of x: later calls pass x
                sink.append(run)
            return run(x2)
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


def _prepared(t2, m, n, s, b, x2, levels, quantize_x):
    """The native plan of a CUDA GEMM on ``x2``'s shape and type (``_native.prepare_gemm``,
    checks included), made once per shape, batch and buffers; None where the planner gives the
    GEMM per-call work."""
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
    return plan


def _runner(plan, x: torch.Tensor, *keep: torch.Tensor | None, out=None):
    """The eager fast path of one planned GEMM: allocate the output (``out`` shape, ``x``'s type
    and device) and launch on ``x`` in the current stream; ``keep`` holds the weights, scale
    and bias alive as long as the runner. With ``out`` None the runner takes ``(x, y)`` and
    writes ``y`` (the old ``gemv``)."""
    index, dtype, device = x.device.index, x.dtype, x.device
    stream = torch._C._cuda_getCurrentRawStream  # what inductor's generated code reads
    launch = plan.launch

    if out is None:

        def run_into(x, y):
            launch(x.data_ptr(), y.data_ptr(), stream(index))

        run_into.keep = keep
        return run_into

    def run(x):
        y = torch.empty(out, dtype=dtype, device=device)
        launch(x.data_ptr(), y.data_ptr(), stream(index))
        return y

    run.keep = keep
    return run


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
            W_packed._version, W_packed.data_ptr(), _x_stamp(X), Y.dtype, Y.shape, Y.get_device(),
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
