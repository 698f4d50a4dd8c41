"""Compatibility with the old ``warp_bitnet_cuda`` extension: ``gemv(W_packed, X, Y)``,
``gemv_int2(W_packed, X, Y)`` and ``gemv_int2_scaled(W_packed, X, scales, Y)``."""

from warp_bitnet.functional import gemv, gemv_int2, gemv_int2_scaled, pack_int2, pack_ternary

__all__ = ["gemv", "gemv_int2", "gemv_int2_scaled", "pack_int2", "pack_ternary"]
