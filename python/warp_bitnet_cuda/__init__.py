"""Compatibility with the old ``warp_bitnet_cuda`` extension: ``gemv(W_packed, X, Y)``."""

from warp_bitnet.functional import gemv, pack_ternary

__all__ = ["gemv", "pack_ternary"]
