"""Hugging Face transformers models on warp-bitnet layers.

``swap_bitnet_linears(model)`` replaces, in place, the BitNet layers that transformers
puts in a model loaded with a BitNet ``quantization_config`` (``microsoft/bitnet-b1.58-2B-4T``,
HF1BitLLM, Falcon3-1.58bit, ...) by ``warp_bitnet.BitLinear`` on the same weights, losslessly:

- legacy ``BitLinear`` (uint8 weights packed along the output dimension, ``y = x W / s``),
- ``AutoBitLinear`` offline (ternary weights, ``y = x W * s``) and online (master weights,
  quantized with absmean as transformers does on every call).

Activations are quantized per token to int8, as in those layers. Embeddings, ``lm_head`` and
every other module are left alone, so ``model.generate()`` works unchanged. For dense
Llama-family models, quantize with ``warp_bitnet.convert_to_bitlinear`` instead.

``convert_checkpoint`` writes such a checkpoint file, or a bitnet.cpp GGUF file, as our packed
safetensors file (``warp-bitnet convert`` of the CLI, the same code).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from . import _native
from . import functional as F
from .nn import BitLinear


def _from_auto(module) -> BitLinear:
    if module.online_quant:
        return BitLinear.from_linear(module, "absmean", quantize_activations=True)
    layer = BitLinear(
        module.in_features,
        module.out_features,
        bias=module.bias is not None,
        quantize_activations=True,
        device=module.weight.device,
        dtype=module.weight.dtype,
    )
    layer.weight_packed.copy_(F.pack_ternary(module.weight.detach()))
    scale = module.weight_scale.detach().to(torch.float32)
    if scale.numel() != 1:
        raise ValueError(f"`weight_scale` must hold one value, got shape {tuple(scale.shape)}")
    layer.weight_scale = scale.reshape(())
    if module.bias is not None:
        layer.bias = module.bias.detach().clone()
    layer.refresh()
    return layer


def swap_bitnet_linears(model: nn.Module) -> nn.Module:
    """Replaces transformers' BitNet layers of ``model`` by ``warp_bitnet.BitLinear``, in place.

    Returns:
        ``model``. A layer with transformers' optional activation RMSNorm becomes
        ``nn.Sequential(norm, BitLinear)``.

    Raises:
        ValueError: if the model holds no BitNet layer, or a layer's weights are not valid
        ternary codes (named in the message).
    """
    try:
        from transformers.integrations.bitnet import AutoBitLinear
        from transformers.integrations.bitnet import BitLinear as HfBitLinear
    except ImportError as e:
        raise ImportError("swap_bitnet_linears needs transformers with BitNet support (>= 4.52)") from e
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, (HfBitLinear, AutoBitLinear))]
    if not targets:
        raise ValueError("the model holds no transformers BitNet layer (BitLinear or AutoBitLinear)")
    for name, module in targets:
        try:
            if isinstance(module, HfBitLinear):
                layer = BitLinear.from_hf_bitnet(module.weight, module.weight_scale, "bitlinear", bias=module.bias)
            else:
                layer = _from_auto(module)
        except (ValueError, TypeError) as e:
            raise type(e)(f"layer `{name}`: {e}") from e
        if module.rms_norm is not None:
            layer = nn.Sequential(module.rms_norm, layer)
        model.set_submodule(name, layer)
    return model


def convert_checkpoint(
    path: str | os.PathLike, output: str | os.PathLike, linear_class: str | None = None
) -> tuple[int, int]:
    """Converts a Hugging Face BitNet safetensors file or a bitnet.cpp GGUF file to our packed
    safetensors file (docs/FORMATS.md), losslessly. Safetensors: every uint8 ``NAME`` with a
    ``NAME_scale`` becomes a packed matrix with the scale folded in. GGUF: every 2-D ``I2_S``
    tensor does; F32 / F16 / BF16 tensors are kept (GGUF names); other types are refused.

    Args:
        path: the checkpoint's ``model.safetensors`` or ``.gguf`` file (told apart by content).
        output: the file to write.
        linear_class: safetensors only: ``"autobitlinear"`` or ``"bitlinear"``; default: the
            ``quantization_config.linear_class`` of the ``config.json`` beside ``path``.

    Raises:
        ValueError: a bad file, a missing linear class, or one given for a GGUF file.
        OSError: the file cannot be read or written (e.g. FileNotFoundError).

    Returns:
        ``(matrices converted, tensors kept)``.
    """
    return _native.convert_checkpoint(os.fspath(path), os.fspath(output), linear_class)
