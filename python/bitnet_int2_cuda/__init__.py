"""Compatibility with the old ``bitnet_int2_cuda`` extension: ``gemv_int2(W_packed, X, Y)``
and ``gemv_int2_scaled(W_packed, X, scales, Y)`` on INT2 weights (``pack_int2``)."""

from warp_bitnet.functional import gemv_int2, gemv_int2_scaled, pack_int2

__all__ = ["gemv_int2", "gemv_int2_scaled", "pack_int2"]
