"""Type stubs of the private native module (crates/warp-bitnet-py). Pointers are
device addresses (``tensor.data_ptr()``), streams ``cudaStream_t`` values as ints."""

from typing import Self, final

__all__ = [
    "CpuWeight",
    "Engine",
    "PreparedGemm",
    "__version__",
    "convert_checkpoint",
    "cpu_isa",
    "cpu_threads",
    "cuda_available",
    "find_bad_code",
    "gemm",
    "i2_to_dense",
    "i2_to_t2",
    "pack_words",
    "prepare_gemm",
    "quantize_activations",
    "quantize_i8",
    "quantize_to_t2",
    "quantize_weights",
    "route",
    "t2_words",
    "unpack_hf_bitnet",
    "unpack_words",
    "w2a8_epilogue",
]

__version__: str

def cuda_available() -> bool:
    """Whether a CUDA driver and device are present."""

def route(device: int, rows: int, cols: int, levels: str, x_dtype: str, batch: int, quantize_x: bool = False) -> str:
    """The route ("groups", "split", "prefill", "prefill_mma" or "dense") a GEMM on `device` takes
    for `batch` tokens of `x_dtype` ("float16", "bfloat16" or "int8") on a rows x cols matrix of
    `levels`: the Rust planner's decision. With `quantize_x`, W2A8 on float16 / bfloat16 tokens
    the library quantizes: "one_launch" where the kernel quantizes one token itself, else the
    int8 route."""

@final
class PreparedGemm:
    """A GEMM planned once (``prepare_gemm``): each launch takes the activations and the output."""

    @property
    def symbol(self) -> str:
        """The planned kernel."""

    def launch(self, x: int, y: int, stream: int) -> None:
        """Launches on ``x`` and ``y`` (device pointers of the planned shapes) in ``stream``."""

def prepare_gemm(
    device: int,
    tiles: int,
    levels: str,
    rows: int,
    cols: int,
    scale: int,
    scale_per_row: bool,
    x_dtype: str,
    ldx: int,
    y_dtype: str,
    ldy: int,
    batch: int,
    bias: int,
    x_scale: int,
    quantize_x: bool,
) -> PreparedGemm | None:
    """Plans ``gemm`` once for fixed weights, shapes, types, bias and scales; None where the GEMM
    needs per-call work (large batches)."""

def t2_words(rows: int, cols: int) -> int:
    """Number of int32 words of the GPU (T2) layout of a rows x cols matrix."""

def i2_to_t2(device: int, src: int, dst: int, rows: int, cols: int, levels: str, stream: int) -> None:
    """I2-layout words at ``src`` (``levels``: ``"ternary"`` or ``"int2"`` codes) -> T2 words at
    ``dst`` on ``device``, in ``stream``'s order."""

def gemm(
    device: int,
    tiles: int,
    levels: str,
    rows: int,
    cols: int,
    scale: int,
    scale_per_row: bool,
    x: int,
    x_dtype: str,
    ldx: int,
    y: int,
    y_dtype: str,
    ldy: int,
    batch: int,
    bias: int,
    x_scale: int,
    quantize_x: bool,
    stream: int,
) -> None:
    """``y = (x . Wᵀ) * scale + bias`` on ``"ternary"`` or ``"int2"`` T2 weights (pointer 0 =
    absent); raises ValueError on bad arguments."""

def i2_to_dense(
    device: int,
    src: int,
    dst: int,
    rows: int,
    cols: int,
    levels: str,
    out: str,
    scale: int,
    scale_per_row: bool,
    stream: int,
) -> None:
    """I2-layout words at ``src`` -> dense ``[rows, cols]`` weights at ``dst`` (``out``: ``"int8"``
    ternary weights or twice the INT2 levels, ``"float16"`` / ``"bfloat16"`` levels times the
    float32 ``scale`` (one, or ``rows`` with ``scale_per_row``; pointer 0 = none))."""

def w2a8_epilogue(
    device: int,
    acc: int,
    x_scale: int,
    w_scale: int,
    scale_per_row: bool,
    bias: int,
    y: int,
    y_dtype: str,
    rows: int,
    batch: int,
    levels: str,
    stream: int,
) -> None:
    """int32 sums ``acc`` ``[batch, rows]`` -> ``y`` (``"float16"`` / ``"bfloat16"``) with the W2A8
    epilogue of the GEMM kernels (pointer 0 = no weight scale / bias)."""

def quantize_to_t2(
    device: int,
    w: int,
    w_dtype: str,
    rows: int,
    cols: int,
    ldw: int,
    scale: int,
    per_row: bool,
    transpose: bool,
    dst: int,
    stream: int,
) -> None:
    """Float weights quantized to ternary with ``scale`` and packed to T2 words at ``dst`` (of
    ``w``, or of its transpose)."""

def quantize_i8(
    device: int, x: int, x_dtype: str, batch: int, n: int, ldx: int, q: int, scale: int, stream: int
) -> None:
    """Per-token int8 quantization of ``x`` into ``q`` and ``scale``."""

def convert_checkpoint(input: str, output: str, linear_class: str | None = None) -> tuple[int, int]:
    """A Hugging Face BitNet checkpoint or a bitnet.cpp GGUF file -> our packed safetensors file;
    (matrices, tensors kept). ``linear_class`` None reads it from the ``config.json`` beside a
    safetensors ``input``."""

def pack_words(src: int, shape: tuple[int, int], levels: str, dst: int) -> None:
    """Packs host values of ``shape`` (rows, cols) at ``src`` (int8 -1, 0, +1 for ``"ternary"``, uint8 codes
    0-3 for ``"int2"``) into int32 words at ``dst``."""

def find_bad_code(src: int, rows: int, cols: int, levels: str) -> tuple[str, int, int] | None:
    """The first fault of host words at ``src``: ``("code", row, col)`` (invalid code) or
    ``("padding", row, col)``; None where they are valid."""

def unpack_words(src: int, rows: int, cols: int, levels: str, dst: int) -> None:
    """Validated host words at ``src`` -> ``rows x cols`` bytes at ``dst`` (int8 weights, or uint8
    INT2 codes)."""

def unpack_hf_bitnet(src: int, rows: int, cols: int, dst: int) -> None:
    """A Hugging Face BitNet uint8 weight ``[rows / 4, cols]`` at ``src`` -> int8 ``[rows, cols]``
    at ``dst``."""

def quantize_weights(w: int, rows: int, cols: int, method: str, dst: int, scale: int) -> None:
    """Float32 host weights quantized by the core quantizer ``method`` ("absmean", "absmean_row",
    "absmax", "int2_mse", "int2_absmax") into words at ``dst`` and scales at ``scale``."""

def quantize_activations(x: int, batch: int, n: int, q: int, scale: int) -> None:
    """Per-token absmax int8 quantization of float32 host ``x`` into ``q`` and ``scale``."""

def cpu_isa() -> str:
    """The instruction set the CPU kernels run (``WARP_BITNET_CPU_ISA`` forces one)."""

def cpu_threads() -> int:
    """The thread count a call with ``threads=0`` uses (``WARP_BITNET_THREADS``, else every CPU)."""

@final
class CpuWeight:
    """Packed I2 or INT2 words converted once to the CPU layout, without a scale."""

    def __new__(cls, words: int, rows: int, cols: int, levels: str) -> Self:
        """Validates and converts the int32 words at host address ``words``."""
    @property
    def rows(self) -> int:
        """Output features."""
    @property
    def cols(self) -> int:
        """Input features."""
    def gemm(
        self,
        x: int,
        batch: int,
        scale: int,
        scale_len: int,
        bias: int,
        y: int,
        quantize: bool,
        threads: int,
    ) -> None:
        """``y = (x . Wᵀ) * scale + bias`` on contiguous float32 CPU tensors by address."""

@final
class Engine:
    """The inference engine (crates/warp-bitnet-py/src/engine.rs); use warp_bitnet.Engine."""

    @staticmethod
    def load(path: str, device: str = "cpu", max_context: int | None = None, threads: int | None = None) -> Engine:
        """Loads a Hugging Face folder or one of our packed files."""

    @staticmethod
    def random(
        preset: str, seed: int = 0, device: str = "cpu", max_context: int | None = None, threads: int | None = None
    ) -> Engine:
        """A preset architecture with random weights."""

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary."""

    @property
    def max_context(self) -> int:
        """Tokens the context holds."""

    def logits(self, ids: list[int]) -> list[float]:
        """Last-position logits of `ids` run from an empty context."""

    def generate(
        self,
        ids: list[int],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop_on_eos: bool = True,
    ) -> list[int]:
        """Generated token ids after `ids`."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`."""

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`."""
