"""warp-bitnet: ternary (BitNet b1.58) linear algebra for PyTorch.

Functional API (``pack_ternary``, ``unpack_ternary``, ``quantize_ternary``,
``quantize_activations_int8``, ``unpack_hf_bitnet``, ``linear``, ``gemv``; INT2: ``pack_int2``,
``unpack_int2``, ``quantize_int2``, ``linear_int2``, ``gemv_int2``, ``gemv_int2_scaled``), modules (``nn.BitLinear``,
``nn.BitLinearTrain``, ``convert_to_bitlinear``), transformers integration
(``hf.swap_bitnet_linears``) and torch.library ops
(``torch.ops.warp_bitnet.*``) backed by CUDA kernels on NVIDIA GPUs and by a
reference path on the CPU.
"""

from . import hf, nn, ops
from ._native import __version__, cuda_available
from .engine import Engine
from .functional import (
    gemv,
    gemv_int2,
    gemv_int2_scaled,
    linear,
    linear_int2,
    pack_int2,
    pack_ternary,
    quantize_activations_int8,
    quantize_int2,
    quantize_ternary,
    unpack_hf_bitnet,
    unpack_int2,
    unpack_ternary,
    validate_packed,
)
from .nn import BitLinear, BitLinearTrain, convert_to_bitlinear, quantize, unquantize

__all__ = [
    "BitLinear",
    "BitLinearTrain",
    "Engine",
    "__version__",
    "convert_to_bitlinear",
    "cuda_available",
    "gemv",
    "gemv_int2",
    "gemv_int2_scaled",
    "hf",
    "linear",
    "linear_int2",
    "nn",
    "ops",
    "pack_int2",
    "pack_ternary",
    "quantize",
    "quantize_activations_int8",
    "quantize_int2",
    "quantize_ternary",
    "unpack_hf_bitnet",
    "unpack_int2",
    "unpack_ternary",
    "unquantize",
    "validate_packed",
]
