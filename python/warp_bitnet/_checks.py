"""Argument checks shared by the functional API's modules: one message per fault, naming the
argument."""

from __future__ import annotations

import torch


def check_tensor(name: str, t, dims: int | None = None, empty_ok: bool = False) -> None:
    """Raises TypeError unless ``t`` is a tensor, ValueError unless it has ``dims`` dimensions
    (when given) and, unless ``empty_ok``, at least one element."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"`{name}` must be {dims}-D, got shape {tuple(t.shape)}")
    if t.numel() == 0 and not empty_ok:
        raise ValueError(f"`{name}` is empty (shape {tuple(t.shape)})")


class PaddingError(ValueError):
    """Non-zero weights past the column count a caller gave (``row``, ``col``)."""

    def __init__(self, message: str, row: int, col: int):
        super().__init__(message)
        self.row, self.col = row, col


def host(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as a contiguous CPU tensor of ``dtype`` (a copy only where needed), for the
    native host functions, which read it by address. Bind the result to a name for as long as
    the native call runs: ``f(host(t).data_ptr())`` frees a copy before ``f`` reads it."""
    return t.detach().to(device="cpu", dtype=dtype).contiguous()
