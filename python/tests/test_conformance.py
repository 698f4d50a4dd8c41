"""Conformance of the PyTorch code the package keeps (because it must run inside autograd,
torch.compile or on CUDA tensors) with the Rust code it mirrors (``_native``), on fresh random
inputs, bit for bit; and of the public packers and quantizers, which run the Rust code, with
independent PyTorch statements of their formulas (docs/FORMATS.md)."""

import pytest
import torch
import warp_bitnet as wb
from warp_bitnet import _cpu, _native, functional, quantizers

SHAPES = [(1, 1), (3, 17), (7, 100), (33, 515)]


def randn(shape, seed, ties=False):
    """Gaussian values; with ``ties`` a fifth of them on multiples of 0.5 (round-half cases)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * (0.1 + 3 * torch.rand(1, generator=g).item())
    if ties:
        mask = torch.rand(*shape, generator=g) < 0.2
        x = torch.where(mask, (x * 2).round() / 2, x)
    return x


def native_quantized(w: torch.Tensor, method: str, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
    m, n = w.shape
    words = torch.empty(m, (n + 15) // 16, dtype=torch.int32)
    scale = torch.empty(m if per_row else (), dtype=torch.float32)
    _native.quantize_weights(w.contiguous().data_ptr(), m, n, method, words.data_ptr(), scale.data_ptr())
    return words, scale


@pytest.mark.parametrize("method", ["absmean", "absmean_row", "absmax"])
@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_training_ternary_quantizer_is_the_rust_one(method, m, n):
    # BitLinearTrain quantizes its master weights with PyTorch ops every step (no host sync).
    for seed in range(4):
        w = randn((m, n), seed * 100 + m, ties=seed % 2 == 1)
        q, s = quantizers._ternary_weight(w, method)
        words, scale = native_quantized(w, method, method == "absmean_row")
        assert torch.equal(s.reshape(scale.shape), scale), (method, seed)
        assert torch.equal(q.to(torch.int8), wb.unpack_ternary(words, n)), (method, seed)


@pytest.mark.parametrize(("b", "n"), SHAPES)
def test_torch_activation_quantizer_is_the_rust_one(b, n):
    # _quantize_rows serves the autograd, float32 CUDA and training paths.
    for seed in range(4):
        x = randn((b, n), seed * 7 + n, ties=seed % 2 == 0)
        if seed == 3:
            x[0] = 0.0  # an all-zero token: the 1e-5 floor
        q, s = quantizers._quantize_rows(x)
        nq, ns = torch.empty(b, n, dtype=torch.int8), torch.empty(b, dtype=torch.float32)
        _native.quantize_activations(x.data_ptr(), b, n, nq.data_ptr(), ns.data_ptr())
        assert torch.equal(q, nq) and torch.equal(s, ns), seed


@pytest.mark.parametrize("levels", ["ternary", "int2"])
def test_torch_w2a8_epilogue_is_the_cpu_kernels_one(levels):
    # functional._w2a8_epilogue finishes the float32 CUDA path; the CPU kernels apply theirs.
    g = torch.Generator().manual_seed(5)
    m, n = 37, 203
    if levels == "int2":
        w = torch.randint(0, 4, (m, n), generator=g).float() - 1.5
        packed, twice = wb.pack_int2(w), 2 * w
    else:
        w = torch.randint(-1, 2, (m, n), generator=g).float()
        packed, twice = wb.pack_ternary(w), w
    x = torch.randn(4, n, generator=g)
    scale, bias = torch.rand(m, generator=g) + 0.5, torch.randn(m, generator=g)
    q, qs = wb.quantize_activations_int8(x)
    acc = (q.double() @ twice.double().T).to(torch.int32)  # exact integers
    want = functional._w2a8_epilogue(acc, qs, scale, bias, levels)
    assert torch.equal(_cpu.runner(x, packed, scale, bias, n, levels, quantize_activations=True)(x), want)


def test_int2_quantizer_matches_the_lloyd_formula():
    # The INT2 quantizer is the Rust one; this states its rounds in PyTorch (float64 sums, as
    # docs/FORMATS.md "INT2" says) and checks codes and scales bit for bit on random rows.
    for seed, (m, n) in enumerate([(1, 7), (5, 64), (9, 333)]):
        w = randn((m, n), 40 + seed, ties=seed == 1)
        for method in ("absmax", "mse"):
            packed, s = wb.quantize_int2(w, method)
            floor = 1e-5 / 1.5
            want_s = (w.abs().amax(dim=1) / 1.5).clamp(min=floor)
            codes = ((w / want_s[:, None]).floor() + 2).clamp(0, 3)
            if method == "mse":
                for r in range(m):
                    sr, cr = want_s[r], codes[r]
                    for _ in range(100):
                        lv = cr.double() - 1.5
                        sr = ((w[r].double() * lv).sum() / (lv * lv).sum()).float().clamp(min=floor)
                        new = ((w[r] / sr).floor() + 2).clamp(0, 3)
                        if torch.equal(new, cr):
                            break
                        cr = new
                    want_s[r], codes[r] = sr, cr
            assert torch.equal(s, want_s), (seed, method)
            assert torch.equal(wb.unpack_int2(packed, n), codes - 1.5), (seed, method)


@pytest.mark.parametrize(("m", "n"), SHAPES)
def test_packers_match_the_word_layout(m, n):
    # Weight k of a word at bits 2k .. 2k+1; I2 codes 0 -> 00, +1 -> 01, -1 -> 10; INT2 code c.
    g = torch.Generator().manual_seed(m * 1000 + n)
    t = torch.randint(-1, 2, (m, n), generator=g)
    c = torch.randint(0, 4, (m, n), generator=g)
    for packed, codes in ((wb.pack_ternary(t.float()), torch.where(t == -1, 2, t)), (wb.pack_int2(c), c)):
        padded = torch.zeros(m, packed.shape[1] * 16, dtype=torch.int64)
        padded[:, :n] = codes
        words = (padded.view(m, -1, 16) << torch.arange(0, 32, 2)).sum(-1)
        assert torch.equal(packed.to(torch.int64) & 0xFFFFFFFF, words)
    assert torch.equal(wb.unpack_ternary(wb.pack_ternary(t.float()), n), t.to(torch.int8))
    assert torch.equal(wb.unpack_int2(wb.pack_int2(c), n), c.float() - 1.5)
