"""torch.library custom ops around the CUDA kernels (``warp_bitnet._native``).

Each op allocates its output with PyTorch's allocator, passes raw pointers and the
current stream to the native module, and has a fake (meta) implementation, so
``torch.compile`` traces it and CUDA-graph capture records it: the native launch
itself never synchronizes, and allocates only the prefill kernels' workspace (beyond
64 tokens) and the int8 row of a ``quantize_x`` token too long for the kernel that
quantizes it, stream-ordered on the current stream (capturable). Inputs are
validated here (device, dtype, contiguity, shape) and again in the Rust core (sizes,
alignment).
"""

from __future__ import annotations

import torch

from . import _native


def eager(op, grad: bool = False):
    """The implementation of custom op ``op`` outside torch.compile, else the op: called
    directly it skips the dispatcher (tens of microseconds a call, more than a GEMV takes);
    it is the same code, graph-capture safe either way. With ``grad`` (an input wants a
    gradient) the op itself, whose outputs refuse backward() instead of silently
    carrying no gradient."""
    return op if grad or torch.compiler.is_compiling() else _IMPLS[op]


def _stream(t: torch.Tensor) -> int:
    # The raw handle of torch's current stream (what inductor's generated code reads);
    # torch.cuda.current_stream() builds a Stream object, several microseconds a call.
    return torch._C._cuda_getCurrentRawStream(t.device.index)


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int8: "int8",
    torch.int32: "int32",
}


def _dtype_name(dt: torch.dtype) -> str:
    return _DTYPE_NAMES[dt]


def _require(cond: bool, message: str, *args) -> None:
    """Raises ValueError(message.format(*args)) unless ``cond``: the message is formatted only
    on failure (these checks run on every call; formatting devices and dtypes costs microseconds)."""
    if not cond:
        raise ValueError(message.format(*args))


def _cuda_contiguous(name: str, t: torch.Tensor, device: torch.device | None = None) -> None:
    _require(t.is_cuda, "`{}` must be a CUDA tensor, got one on {}", name, t.device)
    _require(t.is_contiguous(), "`{}` must be contiguous", name)
    if device is not None:
        _require(t.device == device, "`{}` is on {}, expected {}", name, t.device, device)


def _check_words(packed: torch.Tensor, cols: int) -> None:
    """Packed words ``[M, ceil(cols / 16)]``: int32, contiguous, on CUDA (the kernels read them all)."""
    _cuda_contiguous("packed", packed)
    _require(packed.dtype == torch.int32, "`packed` must be int32, got {}", packed.dtype)
    _require(
        packed.dim() == 2 and cols > 0 and packed.shape[1] == (cols + 15) // 16,
        "`packed` must be [M, {}] for {} columns, got {}", (cols + 15) // 16, cols, tuple(packed.shape),
    )  # fmt: skip


def _to_t2(packed: torch.Tensor, cols: int, levels: str = "ternary") -> torch.Tensor:
    """I2-layout words ``[M, ceil(cols / 16)]`` (int32, CUDA; ternary I2 codes, or INT2
    codes with ``levels="int2"``) -> GPU tile layout (int32 words)."""
    _check_words(packed, cols)
    rows = packed.shape[0]
    out = torch.empty(_native.t2_words(rows, cols), dtype=torch.int32, device=packed.device)
    _native.i2_to_t2(packed.device.index, packed.data_ptr(), out.data_ptr(), rows, cols, levels, _stream(packed))
    return out


to_t2 = torch.library.custom_op("warp_bitnet::to_t2", mutates_args=())(_to_t2)


@to_t2.register_fake
def _(packed, cols, levels="ternary"):
    return packed.new_empty(_native.t2_words(packed.shape[0], cols))


def _check_scale(scale: torch.Tensor | None, rows: int, device: torch.device) -> bool:
    """Checks an optional float32 weight scale of ``[1]`` or ``[rows]``; returns whether it is
    per row (the kernels' ``scale_per_row``)."""
    if scale is None:
        return False
    _cuda_contiguous("scale", scale, device)
    _require(scale.dtype == torch.float32 and scale.numel() in (1, rows), "`scale` must be float32 [1] or [rows]")
    return scale.numel() == rows and rows > 1


def _check_bias(bias: torch.Tensor | None, dtype: torch.dtype, rows: int, device: torch.device) -> None:
    if bias is not None:
        _cuda_contiguous("bias", bias, device)
        _require(bias.dtype == dtype and bias.numel() == rows, "`bias` must be {} [{}]", dtype, rows)


def _i2_to_dense(
    packed: torch.Tensor,
    cols: int,
    levels: str = "ternary",
    dtype: torch.dtype = torch.int8,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """I2-layout words ``[M, ceil(cols / 16)]`` (int32, CUDA) -> dense ``[M, cols]``: int8 ternary
    weights (for ``levels="int2"``, twice the levels: ``2c - 3``), or float16 / bfloat16 levels,
    times ``scale`` (float32 ``[1]`` or ``[M]``; 16-bit outputs only) rounded once."""
    _check_words(packed, cols)
    _require(dtype in (torch.int8, torch.float16, torch.bfloat16), "`dtype` must be int8, float16 or bfloat16")
    rows = packed.shape[0]
    per_row = _check_scale(scale, rows, packed.device)
    out = torch.empty(rows, cols, dtype=dtype, device=packed.device)
    _native.i2_to_dense(
        packed.device.index, packed.data_ptr(), out.data_ptr(), rows, cols, levels, _dtype_name(dtype),
        _ptr(scale), per_row, _stream(packed),
    )  # fmt: skip
    return out


i2_to_dense = torch.library.custom_op("warp_bitnet::i2_to_dense", mutates_args=())(_i2_to_dense)


@i2_to_dense.register_fake
def _(packed, cols, levels="ternary", dtype=torch.int8, scale=None):
    return packed.new_empty(packed.shape[0], cols, dtype=dtype)


def _quantize_to_t2(w: torch.Tensor, scale: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """Float weights ``w`` ``[M, N]`` (f32/f16/bf16, CUDA) -> ternary T2 words in one pass:
    weight = clamp(round(w / scale), -1, 1), ``scale`` float32 ``[1]`` or ``[M]`` on the device
    (no host sync); the T2 words of ``wᵀ`` with ``transpose``."""
    _cuda_contiguous("w", w)
    _require(w.dim() == 2, "`w` must be [M, N], got {}", tuple(w.shape))
    _require(w.dtype in (torch.float32, torch.float16, torch.bfloat16), "`w` must be a float tensor, got {}", w.dtype)
    rows, cols = w.shape
    _require(scale is not None, "`scale` is required")
    per_row = _check_scale(scale, rows, w.device)
    out_shape = (cols, rows) if transpose else (rows, cols)
    out = torch.empty(_native.t2_words(*out_shape), dtype=torch.int32, device=w.device)
    _native.quantize_to_t2(
        w.device.index, w.data_ptr(), _dtype_name(w.dtype), rows, cols, cols, scale.data_ptr(), per_row,
        transpose, out.data_ptr(), _stream(w),
    )  # fmt: skip
    return out


quantize_to_t2 = torch.library.custom_op("warp_bitnet::quantize_to_t2", mutates_args=())(_quantize_to_t2)


@quantize_to_t2.register_fake
def _(w, scale, transpose=False):
    rows, cols = w.shape
    return w.new_empty(_native.t2_words(*((cols, rows) if transpose else (rows, cols))), dtype=torch.int32)


def _gemm(
    t2: torch.Tensor,
    rows: int,
    cols: int,
    scale: torch.Tensor | None,
    x: torch.Tensor,
    bias: torch.Tensor | None,
    levels: str = "ternary",
    quantize_x: bool = False,
) -> torch.Tensor:
    """``y[B, rows] = (x[B, cols] . Wᵀ) * scale + bias`` with f16/bf16 ``x`` on CUDA; ``W``
    ternary, or the INT2 levels with ``levels="int2"``. ``quantize_x`` (one token, B = 1):
    ``x`` is quantized per token to int8 (as ``quantize_i8``) and multiplied as W2A8: inside
    the kernel, in one launch, where the planner's route says so (``functional.one_launch``),
    else by the quantizer first (two launches, the same result)."""
    _cuda_contiguous("x", x)
    _cuda_contiguous("t2", t2, x.device)
    _require(x.dim() == 2 and x.shape[1] == cols, "`x` must be [B, {}], got {}", cols, tuple(x.shape))
    _require(x.dtype in (torch.float16, torch.bfloat16), "`x` must be float16 or bfloat16, got {}", x.dtype)
    _require(not quantize_x or x.shape[0] == 1, "`quantize_x` takes one token, got {}", x.shape[0])
    per_row = _check_scale(scale, rows, x.device)
    _check_bias(bias, x.dtype, rows, x.device)
    y = torch.empty(x.shape[0], rows, dtype=x.dtype, device=x.device)
    dt = _dtype_name(x.dtype)
    _native.gemm(
        x.device.index, t2.data_ptr(), levels, rows, cols, _ptr(scale), per_row, x.data_ptr(), dt, cols,
        y.data_ptr(), dt, rows, x.shape[0], _ptr(bias), 0, quantize_x, _stream(x),
    )  # fmt: skip
    return y


gemm = torch.library.custom_op("warp_bitnet::gemm", mutates_args=())(_gemm)


@gemm.register_fake
def _(t2, rows, cols, scale, x, bias, levels="ternary", quantize_x=False):
    return x.new_empty(x.shape[0], rows)


def _gemm_i8(
    t2: torch.Tensor,
    rows: int,
    cols: int,
    scale: torch.Tensor | None,
    q: torch.Tensor,
    x_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    levels: str = "ternary",
) -> torch.Tensor:
    """W2A8: ``y = (q . Wtᵀ) * x_scale[:, None] * scale + bias`` in ``out_dtype`` (f16/bf16), or
    with ``out_dtype=torch.int32`` the exact integer sums ``q . Wtᵀ`` (``scale`` and ``bias``
    must then be None; for ``levels="int2"`` twice the level sums, integers)."""
    _cuda_contiguous("q", q)
    _cuda_contiguous("t2", t2, q.device)
    _cuda_contiguous("x_scale", x_scale, q.device)
    _require(q.dtype == torch.int8 and q.dim() == 2 and q.shape[1] == cols, "`q` must be int8 [B, {}]", cols)
    _require(x_scale.dtype == torch.float32 and x_scale.numel() == q.shape[0], "`x_scale` must be float32 [B]")
    _require(
        out_dtype in (torch.float16, torch.bfloat16, torch.int32),
        "`out_dtype` must be float16, bfloat16 or int32, got {}",
        out_dtype,
    )
    _require(
        out_dtype != torch.int32 or (scale is None and bias is None), "int32 output takes no `scale` and no `bias`"
    )
    per_row = _check_scale(scale, rows, q.device)
    _check_bias(bias, out_dtype, rows, q.device)
    y = torch.empty(q.shape[0], rows, dtype=out_dtype, device=q.device)
    _native.gemm(
        q.device.index, t2.data_ptr(), levels, rows, cols, _ptr(scale), per_row, q.data_ptr(), "int8", cols,
        y.data_ptr(), _dtype_name(out_dtype), rows, q.shape[0], _ptr(bias), x_scale.data_ptr(), False, _stream(q),
    )  # fmt: skip
    return y


gemm_i8 = torch.library.custom_op("warp_bitnet::gemm_i8", mutates_args=())(_gemm_i8)


@gemm_i8.register_fake
def _(t2, rows, cols, scale, q, x_scale, bias, out_dtype, levels="ternary"):
    return q.new_empty(q.shape[0], rows, dtype=out_dtype)


def _quantize_i8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token int8 quantization of ``[B, N]`` f16/bf16 on CUDA: ``(q, scale)``."""
    _cuda_contiguous("x", x)
    _require(x.dim() == 2 and x.dtype in (torch.float16, torch.bfloat16), "`x` must be float16/bfloat16 [B, N]")
    q = torch.empty(x.shape, dtype=torch.int8, device=x.device)
    scale = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    n = x.shape[1]
    _native.quantize_i8(
        x.device.index, x.data_ptr(), _dtype_name(x.dtype), x.shape[0], n, n, q.data_ptr(), scale.data_ptr(),
        _stream(x),
    )  # fmt: skip
    return q, scale


quantize_i8 = torch.library.custom_op("warp_bitnet::quantize_i8", mutates_args=())(_quantize_i8)


@quantize_i8.register_fake
def _(x):
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[0], dtype=torch.float32)


def _w2a8_epilogue(
    acc: torch.Tensor,
    x_scale: torch.Tensor,
    scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
    levels: str = "ternary",
) -> torch.Tensor:
    """int32 sums ``acc`` ``[B, M]`` (CUDA) of int8 activations and the int8 dense weights of
    ``i2_to_dense`` -> ``[B, M]`` float16 / bfloat16: ``acc * x_scale[b] * scale + bias`` (INT2 sums
    halved), the GEMM kernels' epilogue in one pass."""
    _cuda_contiguous("acc", acc)
    _require(acc.dim() == 2 and acc.dtype == torch.int32, "`acc` must be int32 [B, M], got {}", acc.dtype)
    batch, rows = acc.shape
    _cuda_contiguous("x_scale", x_scale, acc.device)
    _require(x_scale.dtype == torch.float32 and x_scale.numel() == batch, "`x_scale` must be float32 [{}]", batch)
    per_row = _check_scale(scale, rows, acc.device)
    _require(dtype in (torch.float16, torch.bfloat16), "`dtype` must be float16 or bfloat16, got {}", dtype)
    _check_bias(bias, dtype, rows, acc.device)
    y = torch.empty(batch, rows, dtype=dtype, device=acc.device)
    _native.w2a8_epilogue(
        acc.device.index, acc.data_ptr(), x_scale.data_ptr(), _ptr(scale), per_row, _ptr(bias), y.data_ptr(),
        _dtype_name(dtype), rows, batch, levels, _stream(acc),
    )  # fmt: skip
    return y


w2a8_epilogue = torch.library.custom_op("warp_bitnet::w2a8_epilogue", mutates_args=())(_w2a8_epilogue)


@w2a8_epilogue.register_fake
def _(acc, x_scale, scale, bias, dtype, levels="ternary"):
    return acc.new_empty(acc.shape, dtype=dtype)


_IMPLS = {
    to_t2: _to_t2,
    i2_to_dense: _i2_to_dense,
    quantize_to_t2: _quantize_to_t2,
    gemm: _gemm,
    gemm_i8: _gemm_i8,
    quantize_i8: _quantize_i8,
    w2a8_epilogue: _w2a8_epilogue,
}
