"""Writes a GGUF file of a named BitNet architecture with random weights, for speed comparisons.

The file is what bitnet.cpp's converter writes for ``microsoft/bitnet-b1.58-2B-4T`` (architecture
``bitnet-b1.58``, ternary linear layers as ``I2_S``, the tied embedding / lm_head as F16, norms
as F32, a Llama-3-sized byte-level BPE tokenizer in the metadata), so that bitnet.cpp's
``llama-bench`` and our engine time the same shapes from the same bytes. Layouts: docs/FORMATS.md
("GGUF models", "bitnet.cpp GGUF I2_S"). Tensors are generated and written one at a time (2.4B
parameters would not fit in memory as floats), and no transformers model is built.

    python examples/random_gguf.py /tmp/bitnet-2b4t.gguf --arch bitnet-2b4t
    python examples/random_gguf.py /tmp/small.gguf --arch bitnet-2b4t --layers 2

The tokenizer is synthetic (bytes, then every pair and some triples of printable ASCII, then
Llama 3's special-token slots): it tokenizes any text, but its ids mean nothing.
"""

from __future__ import annotations

import argparse
import pathlib
import struct
from dataclasses import dataclass, replace

import numpy as np

GGML_F32, GGML_F16, GGML_I2_S = 0, 1, 36
LLAMA_FTYPE_MOSTLY_I2_S = 40
ALIGNMENT = 32
# GGUF metadata value types.
U32, I32, F32, STR, ARR = 4, 5, 6, 8, 9


@dataclass(frozen=True)
class Arch:
    """The shapes of a model, as crates/warp-bitnet/src/engine/config.rs's presets."""

    gguf_arch: str
    vocab: int
    hidden: int
    inter: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    context: int
    sub_norms: bool
    tied: bool


ARCHS = {
    "bitnet-2b4t": Arch("bitnet-b1.58", 128_256, 2560, 6912, 30, 20, 5, 128, 500_000.0, 4096, True, True),
    "llama3-8b-ternary": Arch("llama", 128_256, 4096, 14_336, 32, 32, 8, 128, 500_000.0, 8192, False, False),
}
SPECIALS = 256  # Llama 3's special-token slots at the top of the vocabulary.


# --- the container (docs/FORMATS.md, "GGUF models") ---


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, kind: int, value) -> bytes:
    fmt = {U32: "<I", I32: "<i", F32: "<f"}
    body = _str(value) if kind == STR else struct.pack(fmt[kind], value)
    return _str(key) + struct.pack("<I", kind) + body


def _kv_array(key: str, kind: int, values: list) -> bytes:
    fmt = {I32: "<i", F32: "<f"}
    head = _str(key) + struct.pack("<IIQ", ARR, kind, len(values))
    if kind == STR:
        return head + b"".join(_str(v) for v in values)
    return head + np.asarray(values, dtype=fmt[kind]).tobytes()


def _pad(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


# --- the tokenizer ---


def _byte_chars() -> list[str]:
    """GPT-2's byte-level alphabet: byte b as one printable character (printable bytes as themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def tokenizer(vocab: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens, token types and merges: 256 bytes, merged pairs then triples, then the specials."""
    tokens = _byte_chars()
    printable = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    pairs = [(a, b) for a in printable for b in printable]
    triples = [(a + b, c) for a, b in pairs for c in printable]
    merged = (pairs + triples)[: vocab - SPECIALS - len(tokens)]
    tokens += [left + right for left, right in merged]
    merges = [f"{left} {right}" for left, right in merged]
    specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    specials += [f"<|reserved_special_token_{i}|>" for i in range(vocab - len(tokens) - len(specials))]
    types = [1] * len(tokens) + [3] * len(specials)
    return tokens + specials, types, merges


# --- tensors ---


def pack_i2s(codes: np.ndarray, scale: float) -> bytes:
    """I2_S (x86): codes w + 1 in blocks of 128 as byte[32b + p] = c[128b + p] << 6 | ... | c[128b + 96 + p],
    then a 32-byte tail whose first 4 bytes are the f32 scale."""
    c = codes.reshape(-1, 4, 32)
    packed = (c[:, 0] << 6) | (c[:, 1] << 4) | (c[:, 2] << 2) | c[:, 3]
    return packed.tobytes() + np.full(8, scale, dtype="<f4").tobytes()


def tensor_plan(a: Arch) -> list[tuple[str, list[int], int]]:
    """(name, GGUF dims (innermost first), GGML type) of every tensor, in bitnet.cpp's order."""
    q, kv = a.heads * a.head_dim, a.kv_heads * a.head_dim
    plan = [("token_embd.weight", [a.hidden, a.vocab], GGML_F16)]
    for i in range(a.layers):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", [a.hidden], GGML_F32),
            (b + "attn_q.weight", [a.hidden, q], GGML_I2_S),
            (b + "attn_k.weight", [a.hidden, kv], GGML_I2_S),
            (b + "attn_v.weight", [a.hidden, kv], GGML_I2_S),
            (b + "attn_output.weight", [q, a.hidden], GGML_I2_S),
            (b + "ffn_norm.weight", [a.hidden], GGML_F32),
            (b + "ffn_gate.weight", [a.hidden, a.inter], GGML_I2_S),
            (b + "ffn_up.weight", [a.hidden, a.inter], GGML_I2_S),
            (b + "ffn_down.weight", [a.inter, a.hidden], GGML_I2_S),
        ]
        if a.sub_norms:
            plan += [
                (b + "attn_sub_norm.weight", [a.hidden], GGML_F32),
                (b + "ffn_sub_norm.weight", [a.inter], GGML_F32),
            ]
    plan.append(("output_norm.weight", [a.hidden], GGML_F32))
    if not a.tied:
        plan.append(("output.weight", [a.hidden, a.vocab], GGML_F16))
    return plan


def nbytes(dims: list[int], ggml_type: int) -> int:
    n = int(np.prod(dims))
    return {GGML_F32: 4 * n, GGML_F16: 2 * n, GGML_I2_S: n // 4 + 32}[ggml_type]


def write_tensor(f, rng: np.random.Generator, dims: list[int], ggml_type: int) -> None:
    """Random data: ternary codes with scale 1/sqrt(cols), N(0, 0.02) f16 embeddings, norms near 1."""
    if ggml_type == GGML_I2_S:
        codes = rng.integers(0, 3, size=int(np.prod(dims)), dtype=np.uint8)
        f.write(pack_i2s(codes, 1.0 / np.sqrt(dims[0])))
    elif ggml_type == GGML_F16:
        rows_per_chunk = max(1, (64 << 20) // (4 * dims[0]))
        for r in range(0, dims[1], rows_per_chunk):
            n = min(rows_per_chunk, dims[1] - r)
            f.write((rng.standard_normal((n, dims[0]), dtype=np.float32) * 0.02).astype("<f2").tobytes())
    else:
        f.write((1.0 + 0.1 * rng.standard_normal(dims[0], dtype=np.float32)).astype("<f4").tobytes())


def metadata(a: Arch, name: str) -> list[bytes]:
    g = a.gguf_arch
    tokens, types, merges = tokenizer(a.vocab)
    return [
        _kv("general.architecture", STR, g),
        _kv("general.name", STR, f"{name} (random weights)"),
        _kv("general.file_type", U32, LLAMA_FTYPE_MOSTLY_I2_S),
        _kv("general.alignment", U32, ALIGNMENT),
        _kv(f"{g}.vocab_size", U32, a.vocab),
        _kv(f"{g}.context_length", U32, a.context),
        _kv(f"{g}.embedding_length", U32, a.hidden),
        _kv(f"{g}.block_count", U32, a.layers),
        _kv(f"{g}.feed_forward_length", U32, a.inter),
        _kv(f"{g}.rope.dimension_count", U32, a.head_dim),
        _kv(f"{g}.attention.head_count", U32, a.heads),
        _kv(f"{g}.attention.head_count_kv", U32, a.kv_heads),
        _kv(f"{g}.attention.key_length", U32, a.head_dim),
        _kv(f"{g}.attention.value_length", U32, a.head_dim),
        _kv(f"{g}.rope.freq_base", F32, a.rope_theta),
        _kv(f"{g}.attention.layer_norm_rms_epsilon", F32, 1e-5),
        _kv("tokenizer.ggml.model", STR, "gpt2"),
        _kv_array("tokenizer.ggml.tokens", STR, tokens),
        _kv_array("tokenizer.ggml.token_type", I32, types),
        _kv_array("tokenizer.ggml.merges", STR, merges),
        _kv("tokenizer.ggml.bos_token_id", U32, a.vocab - SPECIALS),
        _kv("tokenizer.ggml.eos_token_id", U32, a.vocab - SPECIALS + 1),
    ]


def write(path: pathlib.Path, name: str, a: Arch, seed: int) -> None:
    plan = tensor_plan(a)
    kvs = metadata(a, name)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(plan), len(kvs)) + b"".join(kvs)
    offset = 0
    for tname, dims, ggml_type in plan:
        head += _str(tname) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        head += struct.pack("<IQ", ggml_type, offset)
        offset = _pad(offset + nbytes(dims, ggml_type))
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        f.write(head + bytes(_pad(len(head)) - len(head)))
        for _, dims, ggml_type in plan:
            start = f.tell()
            write_tensor(f, rng, dims, ggml_type)
            assert f.tell() - start == nbytes(dims, ggml_type)
            f.write(bytes(_pad(f.tell()) - f.tell()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=pathlib.Path, help="the GGUF file to write")
    p.add_argument("--arch", choices=sorted(ARCHS), default="bitnet-2b4t")
    p.add_argument("--layers", type=int, help="fewer decoder layers than the architecture's (quick checks)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    a = ARCHS[args.arch]
    if args.layers is not None:
        if args.layers < 1:
            p.error(f"--layers must be at least 1, got {args.layers}")
        a = replace(a, layers=args.layers)
    write(args.out, args.arch, a, args.seed)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
