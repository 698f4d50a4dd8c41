"""Compatibility with the old ``bit_linear_train`` module."""

from warp_bitnet.nn import BitLinearTrain, convert_to_bitlinear

__all__ = ["BitLinearTrain", "convert_to_bitlinear"]
