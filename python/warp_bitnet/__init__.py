"""warp-bitnet: ternary (BitNet b1.58) linear algebra for PyTorch.

Functional API (``pack_ternary``, ``unpack_ternary``, ``quantize_ternary``,
``quantize_activations_int8``, ``unpack_hf_bitnet``, ``linear``, ``gemv``), modules (``nn.BitLinear``,
``nn.BitLinearTrain``, ``convert_to_bitlinear``), transformers integration
(``hf.swap_bitnet_linears``) and torch.library ops
(``torch.ops.warp_bitnet.*``) backed by CUDA kernels on NVIDIA GPUs and by a
reference path on the CPU.
"""

from . import hf, nn, ops
from ._native import __version__, cuda_available
from .functional import (
    gemv,
    linear,
    pack_ternary,
    quantize_activations_int8,
    quantize_ternary,
    unpack_hf_bitnet,
    unpack_ternary,
    validate_packed,
)
from .nn import BitLinear, BitLinearTrain, convert_to_bitlinear, quantize, unquantize

__all__ = [
    "BitLinear",
    "BitLinearTrain",
    "__version__",
    "convert_to_bitlinear",
    "cuda_available",
    "gemv",
    "hf",
    "linear",
    "nn",
    "ops",
    "pack_ternary",
    "quantize",
    "quantize_activations_int8",
    "quantize_ternary",
    "unpack_hf_bitnet",
    "unpack_ternary",
    "unquantize",
    "validate_packed",
]
