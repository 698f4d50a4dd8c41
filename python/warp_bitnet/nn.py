"""``BitLinear`` (inference on packed weights), ``BitLinearTrain`` (training with a
straight-through estimator) and ``convert_to_bitlinear``."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from . import _layouts, ops
from . import functional as F
from .quantizers import WEIGHT_METHODS, _quantize_rows, _ternary_weight, _weight_scale

# The most tokens a BitLinearTrain step runs on the kernels. A training step is not the
# planner's GEMM: it quantizes and packs the weights every step and computes the input
# gradient on the transposed matrix, and on the H100 its kernel step lost to the dense
# PyTorch path from 65 tokens on (96 tokens for the input gradient alone; at 256 and 2048
# its float32 weight gradient dominates: bench/results/2026-11-26-h100-prefill run13).
TRAIN_KERNEL_MAX_TOKENS = 64


class BitLinear(nn.Module):
    """Inference layer on packed ternary weights: ``y = (x . Wtᵀ) * scale + bias``.

    Buffers (in ``state_dict``): ``weight_packed`` (int32 I2 words ``[out, ceil(in / 16)]``),
    ``weight_scale`` (float32 ``[]`` or ``[out]``) and, if present, ``bias``. On a CUDA
    device the layer also keeps ``weight_t2``, the weights in the GPU tile layout (not
    saved), made when the weights are loaded and remade by an eager forward after the
    layer moved or ``weight_packed`` changed in place. Call ``refresh()`` yourself before
    a compiled forward of a moved or changed layer, and after writes that PyTorch does not
    version (``weight_packed.data``, numpy or DLPack views).

    Args:
        in_features, out_features: as ``nn.Linear``.
        bias: whether the layer has a bias.
        quantize_activations: quantize inputs per token to int8 (W2A8), as BitNet b1.58 does.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        quantize_activations: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if in_features <= 0 or out_features <= 0:
            raise ValueError(f"features must be positive, got {in_features} -> {out_features}")
        self.in_features, self.out_features = in_features, out_features
        self.quantize_activations = quantize_activations
        self.weight_method = "absmean"  # how the weights were quantized (for unquantize)
        words = (in_features + 15) // 16
        self.register_buffer("weight_packed", torch.zeros(out_features, words, dtype=torch.int32, device=device))
        self.register_buffer("weight_scale", torch.ones((), dtype=torch.float32, device=device))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype or torch.float32, device=device))
        else:
            self.bias = None
        self.register_buffer("weight_t2", None, persistent=False)
        self._t2_source: tuple | None = None  # (data_ptr, version) of the weights weight_t2 holds
        self.refresh()

    def refresh(self) -> None:
        """Remakes ``weight_t2`` from ``weight_packed`` (validated) on CUDA, and forgets what the
        eager fast path planned on the old words; drops ``weight_t2`` elsewhere."""
        _layouts.forget(self.weight_packed)
        self._sync_t2(fresh=True)

    def _sync_t2(self, fresh: bool = False) -> None:
        """``weight_t2``: the GPU layout of ``weight_packed`` from the one layout cache (made
        there once per version, or again with ``fresh``), kept on the module so that compiled
        graphs and captured CUDA graphs read it."""
        w = self.weight_packed
        if not w.is_cuda:
            self.weight_t2, self._t2_source = None, None
            return
        self.weight_t2 = F._t2_of(w, self.in_features, fresh=fresh)
        self._t2_source = (w.data_ptr(), w._version)

    def _gpu_weights(self) -> torch.Tensor:
        if torch.compiler.is_compiling():  # weight_t2 as it is (refresh() after in-place changes)
            if self.weight_t2 is not None:
                return self.weight_t2
            return ops.to_t2(self.weight_packed.contiguous(), self.in_features)
        if self._t2_source != (self.weight_packed.data_ptr(), self.weight_packed._version):
            self._sync_t2()
        return self.weight_t2

    def _apply(self, fn, recurse=True):
        # The scale stays float32 (what the kernels take): a cast of the layer (`.half()`,
        # `.to(torch.bfloat16)`) would round it, so it only follows moves.
        scale = self._buffers.pop("weight_scale")
        super()._apply(fn, recurse)
        moved = fn(scale)
        self._buffers["weight_scale"] = moved if moved.dtype == torch.float32 else scale.to(moved.device)
        # Moved, cast or re-allocated (`to_empty` leaves the words uninitialized): the GPU
        # layout is remade on the next eager forward, or by refresh().
        self.weight_t2, self._t2_source = None, None
        return self

    @classmethod
    def from_linear(cls, linear: nn.Linear, method: str = "absmean", quantize_activations: bool = False) -> BitLinear:
        """Quantizes an ``nn.Linear`` (``method`` as in ``quantize_ternary``)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected nn.Linear, got {type(linear).__name__}")
        packed, scale = F.quantize_ternary(linear.weight.detach(), method)
        layer = cls.from_packed(packed, scale, linear.in_features, linear.bias, quantize_activations)
        layer.weight_method = method
        return layer

    @classmethod
    def from_hf_bitnet(
        cls,
        weight: torch.Tensor,
        weight_scale: torch.Tensor | float,
        linear_class: str = "autobitlinear",
        bias: torch.Tensor | None = None,
        quantize_activations: bool = True,
    ) -> BitLinear:
        """Losslessly from a Hugging Face BitNet layer's packed uint8 ``weight`` and
        ``weight_scale`` (``F.unpack_hf_bitnet``); activations are quantized per token to
        int8 by default, as BitNet b1.58 models were trained."""
        ternary, scale = F.unpack_hf_bitnet(weight, weight_scale, linear_class)
        return cls.from_packed(F.pack_ternary(ternary), scale, ternary.shape[1], bias, quantize_activations)

    @classmethod
    def from_packed(
        cls,
        packed: torch.Tensor,
        scale: torch.Tensor,
        in_features: int,
        bias: torch.Tensor | None = None,
        quantize_activations: bool = False,
    ) -> BitLinear:
        """A layer on I2 words ``packed`` (``[out, ceil(in_features / 16)]``; invalid codes are
        refused when the weights reach a CUDA device or a CPU forward), its scale (``[]`` or
        ``[out]``) and optional ``bias``, on ``packed``'s device."""
        out_features = packed.shape[0]
        if bias is not None and bias.shape != (out_features,):
            raise ValueError(f"`bias` must have shape ({out_features},), got {tuple(bias.shape)}")
        layer = cls(
            in_features,
            out_features,
            bias=bias is not None,
            quantize_activations=quantize_activations,
            device=packed.device,
            dtype=None if bias is None else bias.dtype,
        )
        with torch.no_grad():
            layer.weight_packed.copy_(packed)
            layer.weight_scale = scale.detach().to(device=packed.device, dtype=torch.float32)
            if bias is not None:
                layer.bias = bias.detach().clone()
        layer.refresh()
        return layer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The scale is [] per tensor or [out] per row: take the shape being loaded.
        scale = state_dict.get(prefix + "weight_scale")
        if scale is not None and scale.shape != self.weight_scale.shape:
            self.weight_scale = torch.empty_like(scale, device=self.weight_scale.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.refresh()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return self._traced_forward(x)
        # The buffers straight from their dict: nn.Module's attribute fallback costs about a
        # microsecond per name, more than the rest of a decode call's checks.
        bufs = self._buffers
        bias = bufs.get("bias")
        if bias is None:  # no bias, or one set as a plain attribute
            bias = self.bias
        args = (x, bufs["weight_packed"], bufs["weight_scale"], bias, self.in_features, self.quantize_activations)
        # Eager: the runner functional.linear planned for this signature (the buffers' versions
        # and addresses, x's shape and type), else every check once and a new runner.
        y, stamp = F._linear_fast(*args)
        if y is not None:
            return y
        F._check_x(x, self.in_features, self.weight_packed, "weight_packed")
        if x.is_cuda:
            self._gpu_weights()  # weight_t2 follows the words, for compiled graphs
        sink: list | None = None if stamp is None else []
        y = F._linear(*args, sink=sink)
        F._keep(self.weight_packed, "linear", stamp, sink)
        return y

    def _traced_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward torch.compile traces: the ops on ``weight_t2`` as it is."""
        if not x.is_cuda:
            return F.linear(
                x,
                self.weight_packed,
                self.weight_scale,
                self.bias,
                in_features=self.in_features,
                quantize_activations=self.quantize_activations,
            )
        F._check_x(x, self.in_features, self.weight_packed, "weight_packed")
        if x.numel() == 0:  # an empty batch, as nn.Linear takes it
            return x.new_zeros((*x.shape[:-1], self.out_features))
        return F._linear_t2(
            x,
            self._gpu_weights(),
            self.out_features,
            self.weight_scale,
            self.bias,
            self.quantize_activations,
            i2=self.weight_packed,
        )

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, quantize_activations={self.quantize_activations}"
        )


class _TernarySTE(torch.autograd.Function):
    """Forward: the quantized tensor. Backward: the gradient passes unchanged (STE)."""

    @staticmethod
    def forward(ctx, x, quantized):
        return quantized

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _quantize_weight(w: torch.Tensor, method: str) -> torch.Tensor:
    """``Wt * scale`` in ``w``'s dtype, without packing."""
    q, s = _ternary_weight(w, method)
    return (q * s).to(w.dtype)


def _quantize_act(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax int8 quantize-dequantize: ``q * scale`` of ``quantize_activations_int8``,
    the values the W2A8 products multiply."""
    q, scale = _quantize_rows(x.detach().to(torch.float32))
    return (q.to(torch.float32) * scale[..., None]).to(x.dtype)


class _TernaryLinearCuda(torch.autograd.Function):
    """``BitLinearTrain`` on the CUDA kernels. Forward: the master weights are quantized
    and packed on the device in one pass each (as ``W`` and ``Wᵀ``), then one ternary GEMM (W2A8 when
    activations are quantized). Backward (straight-through): ``dX = dY . (Wt * scale)``
    on the kernels with the transposed matrix; ``dW = dYᵀ . X_q`` dense (the master
    weights' gradient is dense by nature); float32 ``dY`` goes to the kernel as float16
    scaled per row by its max (11-bit mantissa, no overflow), so ``dX`` is within ~1e-3
    of the float32 product."""

    @staticmethod
    def forward(ctx, x, weight, bias, method: str, quantize_activations: bool):
        w = weight.detach().contiguous()
        scale = _weight_scale(w.to(torch.float32), method).reshape(-1)
        pack = ops.eager(ops.quantize_to_t2)
        y = F._linear_t2(x, pack(w, scale, False), w.shape[0], scale, bias, quantize_activations)
        xq = _quantize_act(x) if quantize_activations else x
        ctx.save_for_backward(xq, pack(w, scale, True), scale)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return y

    @staticmethod
    def backward(ctx, dy):
        xq, t2t, scale = ctx.saved_tensors
        n, m = xq.shape[-1], dy.shape[-1]
        g = dy.reshape(-1, m)
        per_row = scale.numel() > 1
        if per_row:
            g = g * scale.to(g.dtype)
        post = None if per_row else scale
        if g.dtype == torch.float32:
            # Rows scaled into [-1, 1] (and by m / 32768 more for tall matrices): a sum of
            # m terms stays inside the float16 range.
            amax = g.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(torch.float32).tiny) * max(1.0, m / 32768)
            dx = F._linear_t2((g / amax).half(), t2t, n, post, None, False).float() * amax
        else:
            dx = F._linear_t2(g.contiguous(), t2t, n, post, None, False)
        dw = (dy.reshape(-1, m).T.float() @ xq.reshape(-1, n).float()).to(ctx.dtypes[0])
        db = None if ctx.dtypes[1] is None else dy.reshape(-1, m).sum(0).to(ctx.dtypes[1])
        return dx.reshape(*dy.shape[:-1], n).to(xq.dtype), dw, db, None, None


class BitLinearTrain(nn.Linear):
    """Drop-in ``nn.Linear`` trained for ternary weights (BitNet b1.58).

    The master weights stay float Parameters. The forward pass uses ternary weights
    (``weight_method``: absmean by default, or ``"absmax"`` for the old project's
    behaviour) and, by default, per-token int8 activations; the backward pass is the
    straight-through estimator: the master weights receive the gradient of the
    quantized product unchanged, and the input gradient uses the quantized weights.
    On CUDA (float16/bfloat16 inputs, or float32 with quantized activations) and at most
    ``TRAIN_KERNEL_MAX_TOKENS`` tokens, both products run on the ternary kernels,
    the weights quantized and packed on the device each step; larger batches and other
    devices take the PyTorch path (dense quantized weights, cuBLAS on CUDA). ``.quantize()`` freezes the layer to
    a fast ``BitLinear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        weight_method: str = "absmean",
        quantize_activations: bool = True,
    ):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if weight_method not in WEIGHT_METHODS:
            raise ValueError(f"`weight_method` must be one of {WEIGHT_METHODS}, got {weight_method!r}")
        self.weight_method = weight_method
        self.quantize_activations = quantize_activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # CUDA kernels take f16/bf16 activations, or float32 ones quantized to int8; beyond
        # TRAIN_KERNEL_MAX_TOKENS tokens, cuBLAS on the dense quantized weights (below) is faster.
        tokens = x.numel() // max(x.shape[-1], 1)
        kernels = x.dtype in (torch.float16, torch.bfloat16) or (x.dtype == torch.float32 and self.quantize_activations)
        kernels = kernels and self.weight.dtype in (torch.float32, torch.float16, torch.bfloat16)
        if x.is_cuda and kernels and tokens <= TRAIN_KERNEL_MAX_TOKENS:
            return _TernaryLinearCuda.apply(x, self.weight, self.bias, self.weight_method, self.quantize_activations)
        w = _TernarySTE.apply(self.weight, _quantize_weight(self.weight, self.weight_method))
        if self.quantize_activations:
            x = _TernarySTE.apply(x, _quantize_act(x))
        return nn.functional.linear(x, w, self.bias)

    def quantize(self) -> BitLinear:
        """The equivalent inference layer (packed weights)."""
        return BitLinear.from_linear(self, self.weight_method, self.quantize_activations)

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", weight_method={self.weight_method!r}, quantize_activations={self.quantize_activations}"
        )


def _check_model(model, fn: str) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{fn}: `model` must be a torch.nn.Module, got {type(model).__name__}")


def _warn_unchanged(fn: str, why: str) -> None:
    warnings.warn(f"{fn} changed nothing: {why}", UserWarning, stacklevel=3)


def _children(module: nn.Module, prefix: str = ""):
    for name, child in module.named_children():
        yield module, name, f"{prefix}{name}", child
        yield from _children(child, f"{prefix}{name}.")


def convert_to_bitlinear(
    model: nn.Module, inplace: bool = True, skip: tuple[str, ...] = ("lm_head",), **kwargs
) -> nn.Module:
    """Replaces every ``nn.Linear`` (not already converted, and whose qualified name
    contains none of ``skip``) with a ``BitLinearTrain`` holding the same weights.

    ``kwargs`` go to ``BitLinearTrain`` (``weight_method``, ``quantize_activations``). Warns
    (UserWarning) when there is nothing to convert.
    """
    import copy

    _check_model(model, "convert_to_bitlinear")
    if isinstance(skip, str):
        raise TypeError(f"convert_to_bitlinear: `skip` must be a tuple of names, got the string {skip!r}")
    if not inplace:
        model = copy.deepcopy(model)
    converted = 0
    for parent, name, qual, child in list(_children(model)):
        if type(child) is nn.Linear and not any(s in qual for s in skip):
            converted += 1
            new = BitLinearTrain(
                child.in_features, child.out_features, bias=child.bias is not None,
                device=child.weight.device, dtype=child.weight.dtype, **kwargs,
            )  # fmt: skip
            with torch.no_grad():
                new.weight.copy_(child.weight)
                if child.bias is not None:
                    new.bias.copy_(child.bias)
            setattr(parent, name, new)
    if not converted:
        _warn_unchanged("convert_to_bitlinear", f"`model` has no nn.Linear submodule outside skip={skip!r}")
    return model


def quantize(model: nn.Module) -> nn.Module:
    """Freezes every ``BitLinearTrain`` in ``model`` (in place) to a ``BitLinear``; warns
    if there is none (convert_to_bitlinear makes them)."""
    _check_model(model, "quantize")
    frozen = 0
    for parent, name, _, child in list(_children(model)):
        if isinstance(child, BitLinearTrain):
            setattr(parent, name, child.quantize())
            frozen += 1
    if not frozen:
        _warn_unchanged("quantize", "`model` has no BitLinearTrain submodule (convert_to_bitlinear makes them)")
    return model


def _master_weights(layer: BitLinear) -> torch.Tensor:
    """Float weights that quantize back to exactly ``layer``'s ternary weights and scale:
    ``Wt * scale / (fraction of non-zero weights)`` for absmean (so that the mean of
    ``|W|`` is the scale again), ``Wt * scale`` for absmax."""
    wt = F.unpack_ternary(layer.weight_packed, layer.in_features).to(torch.float32)
    scale = layer.weight_scale.to(torch.float32)
    if scale.dim() == 1:  # per row (absmean_row)
        frac = (wt != 0).to(torch.float32).mean(dim=1, keepdim=True).clamp(min=1 / wt.shape[1])
        return wt * scale.reshape(-1, 1) / frac
    if layer.weight_method == "absmax":
        return wt * scale
    return wt * scale / (wt != 0).to(torch.float32).mean().clamp(min=1 / wt.numel())


def unquantize(model: nn.Module) -> nn.Module:
    """Turns every ``BitLinear`` back into a trainable ``BitLinearTrain`` (in place) whose
    master weights quantize to the same ternary weights and scale."""
    _check_model(model, "unquantize")
    for parent, name, _, child in list(_children(model)):
        if isinstance(child, BitLinear):
            w = _master_weights(child)
            dtype = child.bias.dtype if child.bias is not None else torch.float32
            new = BitLinearTrain(
                child.in_features, child.out_features, bias=child.bias is not None, device=w.device, dtype=dtype,
                weight_method=child.weight_method, quantize_activations=child.quantize_activations,
            )  # fmt: skip
            with torch.no_grad():
                new.weight.copy_(w)
                if child.bias is not None:
                    new.bias.copy_(child.bias)
            setattr(parent, name, new)
    return model
