"""CUDA path of the functional API: the GPU (T2) layout of packed words, kept in the one
layout cache, and the GEMM on it: the route the Rust planner gives (kernels, or cuBLAS over
decoded weights for large batches), the native plans made once per shape and buffers, and the
runners that the eager fast path replays (``functional``)."""

from __future__ import annotations

import functools

import torch

from . import _layouts, _native, ops
from .packing import check_words
from .quantizers import _quantize_rows


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


def dense_path(
    tokens: int, device: torch.device, rows: int, cols: int, levels: str, quantize_activations: bool
) -> bool:
    """Whether ``linear`` multiplies ``tokens`` tokens by a ``rows`` x ``cols`` matrix on CUDA
    ``device`` on cuBLAS over the decoded weights rather than on the ternary kernels: the
    route the Rust planner gives (``warp_bitnet::cuda::Gpu::route``, with
    ``quantize_activations`` ``Gpu::route_quantized``), asked once per shape."""
    if torch.compiler.is_compiling():
        # Dynamo cannot trace into the native module, and with dynamic shapes the batch has no
        # value to ask about while tracing: compiled graphs run the kernels, right at any batch
        # (on sm_90a the route keeps them at every batch anyway).
        return False
    return _route(_index(device), rows, cols, levels, "float16", tokens, quantize_activations) == "dense"


def one_launch(device: torch.device, rows: int, cols: int, levels: str, x_dtype: torch.dtype) -> bool:
    """Whether one float16 / bfloat16 token of W2A8 on a ``rows`` x ``cols`` matrix on CUDA
    ``device`` is quantized inside the GEMM kernel (one launch) rather than by ``quantize_i8``
    before the int8 GEMM: where its int8 row fits that kernel's shared memory on this GPU, the
    Rust route (``Gpu::route_quantized`` says "one_launch"), asked once per shape. Compiled
    graphs take the op that quantizes in the kernel: its native call makes the same decision
    at run time (``Gpu::gemm_tiles_raw`` quantizes a longer row first)."""
    if torch.compiler.is_compiling():
        return True
    name = ops._dtype_name(x_dtype)
    return _route(_index(device), rows, cols, levels, name, 1, True) == "one_launch"


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


@functools.lru_cache(maxsize=4096)
def _route(index: int, rows: int, cols: int, levels: str, x_dtype: str, tokens: int, quantize: bool) -> str:
    return _native.route(index, rows, cols, levels, x_dtype, tokens, quantize)


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
    quantize_x = quantize_activations and x2.shape[0] == 1 and one_launch(x.device, m, n, levels, x.dtype)
    if not grad and (quantize_x or not quantize_activations) and not torch.compiler.is_compiling() and b is bias:
        plan = _prepared(t2, m, n, s, b, x2, levels, quantize_x)
        if plan is not None:
            run = _runner(plan, x2, t2, s, b, out=(*lead, m))
            if sink is not None and x.is_contiguous():  # then x2 is a view of x: later calls pass x
                sink.append(run)
            return run(x2)
    if quantize_x:
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
