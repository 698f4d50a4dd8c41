"""The native inference engine (CPU, or a CUDA GPU): load a BitNet checkpoint, get logits, generate.

Example::

    engine = warp_bitnet.Engine.load("path/to/bitnet-b1.58-2B-4T")
    ids = engine.encode("The capital of France is")
    print(engine.decode(engine.generate(ids, max_new_tokens=16)))
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from . import _native


def _ids(ids: Sequence[int] | torch.Tensor, arg: str = "ids") -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1 or ids.dtype.is_floating_point:
            raise ValueError(f"`{arg}` must be a 1-D integer tensor, got {ids.dtype} of shape {tuple(ids.shape)}")
        ids = ids.tolist()
    out = [int(i) for i in ids]
    if any(i < 0 for i in out):
        raise ValueError(f"`{arg}` holds a negative token id")
    return out


class Engine:
    """A loaded model. One sequence at a time; not thread-safe across calls on the same object."""

    def __init__(self, native: _native.Engine) -> None:
        self._native = native

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        device: str = "cpu",
        max_context: int | None = None,
        threads: int | None = None,
    ) -> Engine:
        """Loads a model.

        Args:
            path: a Hugging Face folder (``config.json`` + ``*.safetensors``), one of our packed
                safetensors files (``config.json`` beside it), or a GGUF file (bitnet.cpp ``I2_S`` or
                llama.cpp ``TQ1_0`` / ``TQ2_0`` ternary tensors; config and tokenizer from its metadata).
            device: ``"cpu"``, ``"cuda"`` / ``"cuda:N"`` (a GPU) or ``"auto"`` (the GPU where present).
            max_context: tokens the KV cache holds; default the model's limit, at most 4096.
            threads: CPU threads; default all cores.

        Returns:
            The engine.
        """
        return cls(_native.Engine.load(os.fspath(path), device, max_context, threads))

    @classmethod
    def random(cls, preset: str, seed: int = 0, device: str = "cpu", max_context: int | None = None) -> Engine:
        """A preset architecture (``"bitnet-2b4t"``, ``"llama3-8b-ternary"``) with random weights."""
        return cls(_native.Engine.random(preset, seed, device, max_context, None))

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary."""
        return self._native.vocab_size

    @property
    def max_context(self) -> int:
        """Tokens the context holds."""
        return self._native.max_context

    def logits(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Logits of the last position after running ``ids`` from an empty context.

        Args:
            ids: prompt token ids (non-empty).

        Returns:
            A float32 tensor of shape ``[vocab_size]``.
        """
        return torch.tensor(self._native.logits(_ids(ids)), dtype=torch.float32)

    def generate(
        self,
        ids: Sequence[int] | torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop_on_eos: bool = True,
    ) -> list[int]:
        """Generates tokens after ``ids``.

        Args:
            ids: prompt token ids (non-empty).
            max_new_tokens: most tokens to generate (at least 1).
            temperature: 0 picks the most likely token (greedy).
            top_k: keep the k most likely tokens (0: all).
            top_p: nucleus sampling mass in (0, 1].
            repetition_penalty: CTRL's penalty on tokens seen (1: off).
            seed: random seed of sampling.
            stop_on_eos: stop after an end-of-sequence token.

        Returns:
            The generated token ids (without the prompt).
        """
        if max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be at least 1, got {max_new_tokens}")
        return self._native.generate(
            _ids(ids), max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop_on_eos
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (the model's tokenizer)."""
        return self._native.encode(text, add_special_tokens)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (the model's tokenizer)."""
        return self._native.decode(_ids(ids), skip_special_tokens)
