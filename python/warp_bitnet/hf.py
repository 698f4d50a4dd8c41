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

``fuse_projections(model)`` (called by ``swap_bitnet_linears``) then merges the
``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj`` BitLinear layers of each block
into one layer each: one launch where there were three (two), the activations quantized once.

``convert_checkpoint`` writes such a checkpoint file, or a bitnet.cpp GGUF file, as our packed
safetensors file (``warp-bitnet convert`` of the CLI, the same code); ``load_packed`` loads that
file into a transformers model built from its config (GGUF tensor names mapped to transformers'
names), with ``BitLinear`` layers on the packed weights.
"""

from __future__ import annotations

import os
import re

import torch
from torch import nn

from . import _native
from . import functional as F
from .nn import BitLinear

# Sibling projections that read the same input, fused into one layer (stored on the parent
# under the key's name).
FUSABLE = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def _from_auto(module) -> BitLinear:
    if module.online_quant:
        return BitLinear.from_linear(module, "absmean", quantize_activations=True)
    scale = module.weight_scale.detach().to(torch.float32)
    if scale.numel() != 1:
        raise ValueError(f"`weight_scale` must hold one value, got shape {tuple(scale.shape)}")
    packed = F.pack_ternary(module.weight.detach())
    return BitLinear.from_packed(packed, scale.reshape(()), module.in_features, module.bias, quantize_activations=True)


def swap_bitnet_linears(model: nn.Module, fuse: bool = True) -> nn.Module:
    """Replaces transformers' BitNet layers of ``model`` by ``warp_bitnet.BitLinear``, in place.

    Args:
        fuse: then merge sibling projections (``fuse_projections``).

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
    return fuse_projections(model) if fuse else model


class FusedBitLinear(nn.Module):
    """Several ``BitLinear`` layers of one input as one: their rows stacked (each layer's
    scale spread over its rows), computed in one launch on the first call of a part and
    handed out part by part (``part(x, i)``), so that modules calling ``q_proj(x)``,
    ``k_proj(x)``, ``v_proj(x)`` in turn run one GEMM. A part asked with another input
    tensor, or asked again before the others, recomputes; the input must not change in
    place between the calls of one round (modules that project one tensor three times
    don't)."""

    def __init__(self, layers: list[BitLinear]):
        super().__init__()
        first = layers[0]
        for layer in layers:
            if (layer.in_features, layer.quantize_activations) != (first.in_features, first.quantize_activations):
                raise ValueError("fused layers must share in_features and quantize_activations")
            if (layer.bias is None) != (first.bias is None):
                raise ValueError("fused layers must all have a bias or none")
        self.sizes = [layer.out_features for layer in layers]
        self.linear = BitLinear.from_packed(
            torch.cat([layer.weight_packed for layer in layers]),
            torch.cat([layer.weight_scale.to(torch.float32).expand(layer.out_features) for layer in layers]),
            first.in_features,
            None if first.bias is None else torch.cat([layer.bias for layer in layers]),
            first.quantize_activations,
        )
        self._x: torch.Tensor | None = None
        self._parts: tuple[torch.Tensor, ...] = ()
        self._given = 0  # bit i: part i handed out since the last computation

    def part(self, x: torch.Tensor, i: int) -> torch.Tensor:
        if self._x is not x or self._given >> i & 1:
            self._x, self._parts, self._given = x, self.linear(x).split(self.sizes, dim=-1), 0
        out = self._parts[i]
        self._given |= 1 << i
        if self._given == (1 << len(self.sizes)) - 1:  # every part handed out: hold nothing
            self._x, self._parts, self._given = None, (), 0
        return out


class _FusedPart(nn.Module):
    """Part ``index`` of a ``FusedBitLinear`` (which its parent module owns)."""

    def __init__(self, fused: FusedBitLinear, index: int):
        super().__init__()
        object.__setattr__(self, "fused", fused)  # not a submodule: saved once, by the parent
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.part(x, self.index)

    def extra_repr(self) -> str:
        return f"part {self.index} of {self.fused.sizes}"


def fuse_projections(model: nn.Module) -> nn.Module:
    """Merges, in place, every module's ``q_proj``/``k_proj``/``v_proj`` and
    ``gate_proj``/``up_proj`` that are all ``BitLinear`` with the same input size and
    activation quantization into one ``FusedBitLinear`` (``qkv_proj``, ``gate_up_proj``);
    the old names become views of its parts. Other modules are left alone. Returns ``model``."""
    for parent in list(model.modules()):
        for fused_name, names in FUSABLE.items():
            layers = [getattr(parent, n, None) for n in names]
            if not all(type(layer) is BitLinear for layer in layers):
                continue
            try:
                fused = FusedBitLinear(layers)
            except ValueError:
                continue
            parent.add_module(fused_name, fused)
            for i, n in enumerate(names):
                setattr(parent, n, _FusedPart(fused, i))
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


# bitnet.cpp GGUF tensor names -> transformers BitNetForCausalLM names. bitnet.cpp's converter
# writes the projections as they are in the Hugging Face checkpoint (no q/k permutation).
_GGUF_TOP = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_sub_norm": "self_attn.attn_sub_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_sub_norm": "mlp.ffn_sub_norm",
}


def _hf_name(name: str) -> str:
    """The transformers name of GGUF tensor ``name`` (``blk.3.attn_q.weight`` ->
    ``model.layers.3.self_attn.q_proj.weight``)."""
    if name in _GGUF_TOP:
        return _GGUF_TOP[name]
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.(weight|bias)", name)
    if m is None or m.group(2) not in _GGUF_BLOCK:
        raise ValueError(f"GGUF tensor `{name}` has no transformers name")
    return f"model.layers.{m.group(1)}.{_GGUF_BLOCK[m.group(2)]}.{m.group(3)}"


def load_packed(
    model: nn.Module, path: str | os.PathLike, quantize_activations: bool = True, fuse: bool = True
) -> nn.Module:
    """Loads our packed safetensors file (``convert_checkpoint``'s output) into ``model``, a
    transformers model built from the checkpoint's config (e.g.
    ``BitNetForCausalLM(BitNetConfig.from_pretrained(...))``), in place.

    Every packed matrix ``NAME.weight`` replaces the linear layer ``NAME`` by a ``BitLinear`` on
    the packed words and scale (``quantize_activations``: int8 activations per token, as BitNet
    b1.58 models run); every other tensor is copied into the parameter or buffer of its name. A
    file converted from bitnet.cpp's GGUF has GGUF names (``blk.N.attn_q.weight``, ...), which are
    mapped to transformers' BitNet names; GGUF files of Llama-family models are refused, as
    llama.cpp stores their q/k rows permuted for its rotary layout. ``fuse`` then merges the
    projections (``fuse_projections``).

    Raises:
        ValueError: not our packed file, INT2 matrices, a name the model lacks, a shape that
            differs, a model tensor the file does not set (a tied ``lm_head`` may be absent); the
            model is unchanged then.

    Returns:
        ``model``.
    """
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iterator)
    if meta.get("format") != "warp-bitnet/i2":
        raise ValueError(f"{os.fspath(path)} is not a packed ternary file (format {meta.get('format')!r})")
    matrices = sorted(k[: -len(".packed")] for k in tensors if k.endswith(".packed"))
    name_of = str
    if any(k.startswith("blk.") or k in _GGUF_TOP for k in tensors):
        if not any(".attn_sub_norm." in k for k in tensors):
            raise ValueError("a GGUF file without BitNet sub-norms (Llama family: q/k permuted by llama.cpp)")
        name_of = _hf_name

    # Everything is checked before the model changes: the new layers and the state they load.
    modules = dict(model.named_modules())
    layers, state = {}, {}
    for m in matrices:
        name = name_of(m)
        module_name = name.removesuffix(".weight")
        old = modules.get(module_name) if name.endswith(".weight") else None
        if old is None:
            raise ValueError(f"packed matrix `{name}` is not the weight of a module of the model")
        cols = int(meta[f"{m}.cols"]) if meta.get(f"{m}.cols", "").isdecimal() else None
        words = tensors.pop(m + ".packed")
        shape = (getattr(old, "out_features", None), getattr(old, "in_features", None))
        if cols is None or shape != (words.shape[0], cols) or words.shape[1] != (cols + 15) // 16:
            raise ValueError(
                f"`{name}` is {tuple(words.shape)} words for {cols} columns, the model's `{module_name}` {shape}"
            )
        has_bias = isinstance(getattr(old, "bias", None), torch.Tensor)
        layers[module_name] = BitLinear(cols, words.shape[0], has_bias, quantize_activations)
        state[module_name + ".weight_packed"] = words
        scale = tensors.pop(m + ".scale", torch.ones((), dtype=torch.float32))
        if scale.numel() not in (1, words.shape[0]):
            raise ValueError(f"`{name}` has {scale.numel()} scales for {words.shape[0]} rows")
        state[module_name + ".weight_scale"] = scale
    state.update((name_of(k), v) for k, v in tensors.items())

    # The model's state with the new layers in place of the old (not yet swapped in).
    expected = {k: v for k, v in model.state_dict().items() if not any(k.startswith(m + ".") for m in layers)}
    for module_name, layer in layers.items():
        expected.update((f"{module_name}.{k}", v) for k, v in layer.state_dict().items())
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    missing = sorted(set(expected) - set(state) - ({"lm_head.weight"} if tied else set()))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        raise ValueError(f"the file does not set {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        raise ValueError(f"the model has no {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    for k, v in state.items():
        if not k.endswith(".weight_scale") and v.shape != expected[k].shape:
            raise ValueError(f"`{k}` has shape {tuple(v.shape)}, the model's {tuple(expected[k].shape)}")

    for module_name, layer in layers.items():
        model.set_submodule(module_name, layer.to(next(modules[module_name].parameters()).device))
    model.load_state_dict(state, strict=False)
    return fuse_projections(model) if fuse else model
