"""The native CPU kernels behind the functional API on CPU tensors (warp_bitnet._cpu), against
float64 references of the unpacked weights; every instruction set this CPU has is forced in
turn in a subprocess."""

import os
import subprocess
import sys

import pytest
import torch
import warp_bitnet as wb
from warp_bitnet import _cpu, _layouts, _native


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-30)).item()


def reference(x, levels, scale, bias):
    y = x.double().reshape(-1, x.shape[-1]) @ levels.double().T
    if scale is not None:
        y = y * scale.double().reshape(1, -1)
    if bias is not None:
        y = y + bias.double()
    return y.reshape(*x.shape[:-1], -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("m", "n", "tokens"), [(1, 1, 1), (37, 203, 3), (64, 300, 9), (130, 129, (2, 5))])
def test_linear_matches_the_reference(dtype, m, n, tokens):
    gen = torch.Generator().manual_seed(m * n)
    W = torch.randint(-1, 2, (m, n), generator=gen).float()
    lead = tokens if isinstance(tokens, tuple) else (tokens,)
    x = torch.randn(*lead, n, generator=gen).to(dtype)
    scale = torch.rand(m, generator=gen) + 0.5
    bias = torch.randn(m, generator=gen).to(dtype)
    y = wb.linear(x, wb.pack_ternary(W), scale, bias)
    assert y.dtype == dtype and y.shape == (*lead, m)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert rel(y, reference(x.float(), W, scale, bias.float())) <= tol


def test_w2a8_is_exact_against_the_quantized_reference():
    gen = torch.Generator().manual_seed(1)
    m, n = 45, 517
    W = torch.randint(-1, 2, (m, n), generator=gen).float()
    x = torch.randn(6, n, generator=gen)
    scale = torch.tensor(0.37)
    y = wb.linear(x, wb.pack_ternary(W), scale, quantize_activations=True)
    q, qs = wb.quantize_activations_int8(x)
    acc = q.double() @ W.double().T  # exact integers
    want = ((acc.float() * qs[:, None]) * scale).float()
    assert torch.equal(y, want)


def test_int2_linear_and_gemv():
    gen = torch.Generator().manual_seed(2)
    m, n = 33, 250
    levels = torch.randint(0, 4, (m, n), generator=gen).float() - 1.5
    packed = wb.pack_int2(levels)
    x = torch.randn(3, n, generator=gen)
    s = torch.rand(m, generator=gen)
    assert rel(wb.linear_int2(x, packed, s), reference(x, levels, s, None)) <= 1e-5
    y = torch.full((m,), float("nan"))
    wb.gemv_int2_scaled(packed, x[0], s, y)
    assert rel(y, reference(x[:1], levels, s, None)[0]) <= 1e-5


def test_conversion_is_cached_per_tensor_version():
    gen = torch.Generator().manual_seed(3)
    W = torch.randint(-1, 2, (20, 40), generator=gen).float()
    packed = wb.pack_ternary(W)
    first = _cpu.weight(packed, 40, "ternary")
    assert _cpu.weight(packed, 40, "ternary") is first
    W2 = -W
    packed.copy_(wb.pack_ternary(W2))  # bumps the version
    assert _cpu.weight(packed, 40, "ternary") is not first
    x = torch.randn(2, 40, generator=gen)
    assert rel(wb.linear(x, packed), reference(x, W2, None, None)) <= 1e-5


def test_bad_weights_and_autograd_fall_back_or_fail_clearly():
    packed = wb.pack_ternary(torch.ones(2, 20))
    packed[1, 1] |= 0b11 << 2
    with pytest.raises(ValueError, match="invalid 2-bit code 0b11 at row 1, column 17"):
        wb.linear(torch.randn(1, 20), packed)
    W = torch.randint(-1, 2, (5, 24)).float()
    x = torch.randn(2, 24, requires_grad=True)
    wb.linear(x, wb.pack_ternary(W)).sum().backward()  # the autograd path, not the kernels
    assert torch.allclose(x.grad, W.sum(0).expand(2, -1))


def test_bitlinear_on_cpu_uses_the_kernels():
    layer = torch.nn.Linear(96, 40)
    bl = wb.BitLinear.from_linear(layer)
    x = torch.randn(4, 96)
    with torch.no_grad():
        y = bl(x)
    assert _layouts.holds(bl.weight_packed, "cpu")
    w = wb.unpack_ternary(bl.weight_packed, 96).float()
    assert rel(y, reference(x, w, bl.weight_scale, bl.bias)) <= 1e-5


@pytest.mark.parametrize("isa", ["portable", "avx2"])
def test_each_isa_forced(isa):
    code = (
        "import torch, warp_bitnet as wb\n"
        "from warp_bitnet import _native\n"
        f"assert _native.cpu_isa() == {isa!r}\n"
        "W = torch.randint(-1, 2, (50, 333)).float(); x = torch.randn(3, 333)\n"
        "y = wb.linear(x, wb.pack_ternary(W))\n"
        "e = ((y.double() - x.double() @ W.double().T).abs().max() / (x.double() @ W.double().T).abs().max())\n"
        "assert e < 1e-5, e\n"
    )
    env = {**os.environ, "WARP_BITNET_CPU_ISA": isa}
    r = subprocess.run([sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True)
    if isa != "portable" and "not available on this CPU" in r.stderr:
        pytest.skip(f"this CPU has no {isa}")
    assert r.returncode == 0, r.stderr
    assert _native.cpu_threads() >= 1


def test_eager_runners_follow_the_arguments(monkeypatch):
    # The eager fast path keeps one runner per weight and call signature: the second call with
    # the same signature skips the checks, and an in-place weight update, a new scale value, a
    # new bias tensor or another batch shows in the next result.
    from warp_bitnet import functional

    g = torch.Generator().manual_seed(6)
    m, n = 30, 70
    layer = wb.BitLinear(n, m, bias=True)
    for step in range(3):
        w = torch.randint(-1, 2, (m, n), generator=g).float()
        layer.weight_packed.copy_(wb.pack_ternary(w))
        layer.bias = torch.randn(m, generator=g)
        layer.weight_scale.fill_(0.5 + step)
        for batch in (1, 1, 3):
            x = torch.randn(batch, n, generator=g)
            want = reference(x, w, layer.weight_scale, layer.bias)
            with torch.no_grad():
                assert rel(layer(x), want) <= 1e-5, (step, batch)
            assert (
                rel(wb.linear(x, layer.weight_packed, 2.0, None, in_features=n), reference(x, w, None, None) * 2)
                <= 1e-5
            )
    calls = []
    monkeypatch.setattr(functional, "_check_linear_args", lambda *a: calls.append(a) or 1 / 0)
    x = torch.randn(3, n, generator=g)
    assert rel(wb.linear(x, layer.weight_packed, 2.0, None, in_features=n), reference(x, w, None, None) * 2) <= 1e-5
    with torch.no_grad():
        layer(x)
    assert not calls  # both served by their runners


def test_old_gemv_loop_follows_the_weights():
    g = torch.Generator().manual_seed(7)
    packed = wb.pack_ternary(torch.zeros(9, 40))
    for _ in range(2):
        w = torch.randint(-1, 2, (9, 40), generator=g).float()
        packed.copy_(wb.pack_ternary(w))
        for _ in range(2):
            x, y = torch.randn(40, generator=g), torch.full((9,), float("nan"))
            wb.gemv(packed, x, y)
            assert rel(y, reference(x[None], w, None, None)[0]) <= 1e-5
