"""The one cache of what the package derives from a packed weight tensor: its column count
(recorded by the packers), its GPU (T2) and CPU (C2) layouts, and the GEMMs planned on the
GPU layout. An entry is keyed by the tensor's identity and kind, holds a weak reference (it
leaves when the tensor dies) and a stamp (the tensor's version counter and what the layout
was made for), so a layout is made once per tensor version; a tensor changed in place
(``copy_``, ``+=``) bumps its version and is converted again."""

from __future__ import annotations

import weakref

import torch

# (id(tensor), kind) -> (weak reference to the tensor, stamp, value). (A WeakKeyDictionary
# would compare tensors with ==.)
_STORE: dict[tuple[int, str], tuple] = {}


def get(t: torch.Tensor, kind: str, stamp) -> object | None:
    """The value stored for ``t`` under ``kind`` with this ``stamp``, else None."""
    hit = _STORE.get((id(t), kind))
    if hit is not None and hit[0]() is t and hit[1] == stamp:
        return hit[2]
    return None


def put(t: torch.Tensor, kind: str, stamp, value):
    """Stores ``value`` for ``t`` under ``kind`` (replacing any earlier one); returns it."""
    key = (id(t), kind)
    _STORE[key] = (weakref.ref(t, lambda _, key=key: _STORE.pop(key, None)), stamp, value)
    return value


def forget(t: torch.Tensor) -> None:
    """Drops every value stored for ``t`` (after writes its version counter does not see)."""
    for key in [k for k in _STORE if k[0] == id(t)]:
        hit = _STORE.pop(key)
        if hit[0]() is not t:  # another tensor's entry at a reused id: keep it
            _STORE[key] = hit


def holds(t: torch.Tensor, kind: str) -> bool:
    """Whether some value is stored for ``t`` under ``kind`` (any stamp)."""
    hit = _STORE.get((id(t), kind))
    return hit is not None and hit[0]() is t


# Runners kept per tensor and kind: a few call signatures (batch shapes, scale values) of the
# current version of the tensor.
RUNNERS_MAX = 8


def runner(t: torch.Tensor, kind: str, stamp: tuple):
    """The runner kept for ``t`` under ``kind`` for a call signature ``stamp``, else None."""
    table = get(t, kind, None)
    return None if table is None else table.get(stamp)


def keep_runner(t: torch.Tensor, kind: str, stamp: tuple, run) -> None:
    """Keeps ``run`` for ``stamp``. Stamps open with the tensor's version and address: the
    runners of other versions leave (they hold the old layouts alive)."""
    table = get(t, kind, None)
    if table is None or len(table) >= RUNNERS_MAX:
        table = put(t, kind, None, {})
    for old in [s for s in table if s[:2] != stamp[:2]]:
        del table[old]
    table[stamp] = run


def record_columns(words: torch.Tensor, n: int) -> torch.Tensor:
    """Records that ``words`` (made by a packer here) hold ``n`` columns; returns them."""
    put(words, "columns", None, n)
    return words


def recorded_columns(words: torch.Tensor) -> int | None:
    """The column count a packer recorded for ``words``, else None (I2 words hold up to 15
    columns of padding, so their shape cannot tell)."""
    return get(words, "columns", None)
