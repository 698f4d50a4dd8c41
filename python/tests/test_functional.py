"""CPU tests of the functional API (GPU variants in test_gpu.py)."""

import functools

import pytest
import torch
import warp_bitnet as wb


def old_pack_ternary(W):
    """The old project's packer, verbatim semantics (README of WARP BITNET)."""
    M, N = W.shape
    W_packed = torch.zeros(M, N // 16, dtype=torch.int32, device=W.device)
    for k in range(16):
        bits = torch.where(W[:, k::16] == 1, 1, torch.where(W[:, k::16] == -1, 2, 0))
        W_packed |= bits.int() << (k * 2)
    return W_packed


def ternary(m, n, gen):
    return torch.randint(-1, 2, (m, n), generator=gen).float()


def test_pack_is_bit_identical_to_the_old_packer():
    gen = torch.Generator().manual_seed(0)
    for m, n in [(1, 16), (7, 64), (33, 4096)]:
        W = ternary(m, n, gen)
        assert torch.equal(wb.pack_ternary(W), old_pack_ternary(W))


def test_known_words():
    W = torch.zeros(2, 17)
    W[0, :4] = torch.tensor([1.0, -1.0, 0.0, 1.0])
    W[1, :16] = -1
    W[1, 16] = 1
    words = wb.pack_ternary(W)
    assert words.tolist() == [[0b01_00_10_01, 0], [torch.tensor(0xAAAAAAAA).to(torch.int32).item(), 1]]


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100])
def test_round_trip_with_padding(n):
    gen = torch.Generator().manual_seed(n)
    W = ternary(5, n, gen)
    packed = wb.pack_ternary(W)
    assert packed.shape == (5, (n + 15) // 16)
    assert torch.equal(wb.unpack_ternary(packed, n).float(), W)


def test_validate_names_the_bad_weight():
    packed = wb.pack_ternary(torch.zeros(2, 20))
    packed[1, 1] |= 0b11 << 2
    with pytest.raises(ValueError, match="row 1, column 17"):
        wb.validate_packed(packed, 20)
    packed = wb.pack_ternary(torch.zeros(2, 20))
    packed[0, 1] |= 0b01 << 10  # column 21 >= 20
    with pytest.raises(ValueError, match="padding at row 0, column 21"):
        wb.validate_packed(packed, 20)


def test_bad_inputs_are_exceptions_naming_the_argument():
    with pytest.raises(ValueError, match="only -1, 0 and \\+1"):
        wb.pack_ternary(torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="`W` must be 2-D"):
        wb.pack_ternary(torch.zeros(4))
    with pytest.raises(ValueError, match="`W` is empty"):
        wb.pack_ternary(torch.zeros(0, 4))
    with pytest.raises(TypeError, match="`W` must be a torch.Tensor"):
        wb.pack_ternary([[1, 0]])
    with pytest.raises(ValueError, match="NaN"):
        wb.quantize_ternary(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="method"):
        wb.quantize_ternary(torch.ones(2, 2), method="median")
    with pytest.raises(TypeError, match="int32"):
        wb.validate_packed(torch.zeros(2, 2, dtype=torch.int64), 32)
    packed = wb.pack_ternary(torch.zeros(3, 32))
    with pytest.raises(ValueError, match="`x` has 31 features"):
        wb.linear(torch.zeros(2, 31), packed, in_features=32)
    with pytest.raises(ValueError, match="`bias` must have shape"):
        wb.linear(torch.zeros(2, 32), packed, bias=torch.zeros(4))
    with pytest.raises(ValueError, match="`Y` has 2 elements"):
        wb.gemv(packed, torch.zeros(32), torch.zeros(2))


def test_absmean_matches_the_formula_and_rounds_half_to_even():
    W = torch.tensor([[0.5, -0.5, 1.0, 2.0]])  # gamma = 1: the two halves are ties -> 0
    packed, scale = wb.quantize_ternary(W)
    assert scale.item() == 1.0
    assert wb.unpack_ternary(packed, 4).tolist() == [[0, 0, 1, 1]]
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(8, 40, generator=gen)
    packed, scale = wb.quantize_ternary(W, "absmean_row")
    gamma = W.abs().double().mean(1).float().clamp(min=1e-5)
    assert torch.equal(scale, gamma)
    want = (W / gamma[:, None]).round().clamp(-1, 1)
    assert torch.equal(wb.unpack_ternary(packed, 40).float(), want)
    packed, scale = wb.quantize_ternary(W, "absmax")
    assert scale.item() == W.abs().max().item()


def test_activation_quantizer_matches_the_formula():
    x = torch.tensor([[1.0, -2.0, 0.5], [254.0, 1.0, 0.0]])
    q, scale = wb.quantize_activations_int8(x)
    assert q.tolist() == [[64, -127, 32], [127, 0, 0]]
    assert scale.tolist() == pytest.approx([1 / 63.5, 2.0])


@pytest.mark.parametrize("batch_shape", [(1,), (3,), (2, 5)])
@pytest.mark.parametrize("n", [16, 50])
def test_linear_matches_float64(batch_shape, n):
    gen = torch.Generator().manual_seed(n)
    W = ternary(9, n, gen)
    scale = torch.rand(9, generator=gen) + 0.5
    bias = torch.randn(9, generator=gen)
    x = torch.randn(*batch_shape, n, generator=gen)
    y = wb.linear(x, wb.pack_ternary(W), scale, bias)
    want = (x.double() @ W.double().T) * scale.double() + bias.double()
    assert y.shape == (*batch_shape, 9)
    torch.testing.assert_close(y.double(), want, rtol=1e-5, atol=1e-5)


def test_w2a8_linear_is_the_integer_product():
    gen = torch.Generator().manual_seed(3)
    W = ternary(6, 40, gen)
    x = torch.randn(4, 40, generator=gen)
    y = wb.linear(x, wb.pack_ternary(W), quantize_activations=True)
    q, s = wb.quantize_activations_int8(x)
    want = (q.double() @ W.double().T) * s.double()[:, None]
    torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=1e-6)


def test_gemv_writes_y_in_place():
    gen = torch.Generator().manual_seed(4)
    W = ternary(10, 64, gen)
    X = torch.randn(64, generator=gen)
    Y = torch.full((10,), float("nan"))
    wb.gemv(wb.pack_ternary(W), X, Y)
    torch.testing.assert_close(Y.double(), W.double() @ X.double(), rtol=1e-5, atol=1e-5)


def hf_pack(W: torch.Tensor) -> torch.Tensor:
    """The Hugging Face BitNet packer, written from its description: row i * out / 4 + p
    goes to bits 2i .. 2i+1 of byte row p, as w + 1."""
    q = W.shape[0] // 4
    codes = (W + 1).to(torch.uint8)
    out = torch.zeros(q, W.shape[1], dtype=torch.uint8)
    for i in range(4):
        out |= codes[i * q : (i + 1) * q] << (2 * i)
    return out


def test_hf_bitnet_import_is_lossless_in_both_conventions():
    gen = torch.Generator().manual_seed(11)
    W = ternary(12, 37, gen)
    packed = hf_pack(W)
    assert packed.shape == (3, 37)
    t, s = wb.unpack_hf_bitnet(packed, torch.tensor([2.0], dtype=torch.bfloat16))
    assert t.dtype == torch.int8 and torch.equal(t, W.to(torch.int8))
    assert s.shape == () and s.item() == 2.0
    t, s = wb.unpack_hf_bitnet(packed, 4.0, "bitlinear")
    assert torch.equal(t, W.to(torch.int8)) and s.item() == 0.25
    # Known byte: rows 0..4 of one column are -1, 0, +1, 0 -> codes 0, 1, 2, 1.
    t, _ = wb.unpack_hf_bitnet(torch.tensor([[0b01_10_01_00]], dtype=torch.uint8), 1.0)
    assert t.flatten().tolist() == [-1, 0, 1, 0]


def test_hf_bitnet_bad_inputs():
    ok = torch.zeros(2, 3, dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8"):
        wb.unpack_hf_bitnet(ok.to(torch.int32), 1.0)
    with pytest.raises(ValueError, match="row 0, column 1"):
        wb.unpack_hf_bitnet(torch.tensor([[0, 3]], dtype=torch.uint8), 1.0)
    with pytest.raises(ValueError, match="linear_class"):
        wb.unpack_hf_bitnet(ok, 1.0, "linear")
    with pytest.raises(ValueError, match="one value"):
        wb.unpack_hf_bitnet(ok, torch.ones(2))
    with pytest.raises(ValueError, match="not finite"):
        wb.unpack_hf_bitnet(ok, 0.0, "bitlinear")
    with pytest.raises(ValueError, match="empty"):
        wb.unpack_hf_bitnet(torch.zeros(0, 3, dtype=torch.uint8), 1.0)


def int2_levels(m, n, gen):
    return torch.randint(0, 4, (m, n), generator=gen).float() - 1.5


def test_int2_pack_known_word_and_round_trip():
    packed = wb.pack_int2(torch.tensor([[-1.5, -0.5, 0.5, 1.5]]))
    assert packed.tolist() == [[0b11_10_01_00]]
    gen = torch.Generator().manual_seed(20)
    for m, n in [(1, 16), (5, 37), (3, 100)]:
        L = int2_levels(m, n, gen)
        p = wb.pack_int2(L)
        assert p.shape == (m, (n + 15) // 16)
        assert torch.equal(wb.unpack_int2(p, n), L)


def test_int2_quantizers_match_the_formulas():
    # absmax: s = 3 / 1.5 = 2; W / s = -1.5, -0.5, 0 (boundary: up), 0.45, 1.1, 1.5.
    W = torch.tensor([[-3.0, -1.0, 0.0, 0.9, 2.2, 3.0]])
    p, s = wb.quantize_int2(W, "absmax")
    assert s.tolist() == [2.0]
    assert wb.unpack_int2(p, 6).tolist() == [[-1.5, -0.5, 0.5, 0.5, 1.5, 1.5]]
    # mse reproduces a row on the grid of 0.3 exactly.
    W = torch.tensor([[-0.45, -0.15, 0.15, 0.45, 0.15, -0.15]])
    p, s = wb.quantize_int2(W)
    assert abs(s.item() - 0.3) < 1e-6
    assert wb.unpack_int2(p, 6).tolist() == [[-1.5, -0.5, 0.5, 1.5, 0.5, -0.5]]
    # Gaussian rows: mse reaches the optimal uniform 4-level error (0.1188), absmax does not.
    W = torch.randn(16, 4096, generator=torch.Generator().manual_seed(21))
    err = {}
    for method in ("mse", "absmax"):
        p, s = wb.quantize_int2(W, method)
        err[method] = ((W - wb.unpack_int2(p, 4096) * s[:, None]).pow(2).sum() / W.pow(2).sum()).item()
    assert abs(err["mse"] - 0.1188) < 0.004 and err["absmax"] > 0.4, err


@pytest.mark.parametrize("n", [16, 37, 300])
def test_int2_linear_and_old_gemv_match_float64(n):
    gen = torch.Generator().manual_seed(22)
    L = int2_levels(9, n, gen)
    p = wb.pack_int2(L)
    x = torch.randn(3, n, generator=gen)
    scale, bias = torch.rand(9, generator=gen) + 0.5, torch.randn(9, generator=gen)
    want = (x.double() @ L.double().T) * scale.double() + bias.double()
    torch.testing.assert_close(wb.linear_int2(x, p, scale, bias).double(), want, rtol=1e-5, atol=1e-5)
    Y = torch.full((9,), float("nan"))
    wb.gemv_int2(p, x[0], Y)
    torch.testing.assert_close(Y.double(), x[0].double() @ L.double().T, rtol=1e-5, atol=1e-5)
    Y = torch.full((9,), float("nan"))
    wb.gemv_int2_scaled(p, x[1], scale, Y)
    torch.testing.assert_close(Y.double(), (x[1].double() @ L.double().T) * scale.double(), rtol=1e-5, atol=1e-5)


def test_int2_bad_inputs():
    with pytest.raises(ValueError, match="-1.5"):
        wb.pack_int2(torch.tensor([[0.0, 0.5]]))
    with pytest.raises(ValueError, match="integer.*codes 0, 1, 2 and 3"):
        wb.pack_int2(torch.tensor([[0, 4]], dtype=torch.int32))
    with pytest.raises(TypeError, match="float levels or integer codes"):
        wb.pack_int2(torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="padding at row 0, column 3"):
        wb.unpack_int2(torch.tensor([[1 << 6]], dtype=torch.int32), 3)
    with pytest.raises(ValueError, match="method"):
        wb.quantize_int2(torch.ones(2, 2), "absmean")
    with pytest.raises(ValueError, match="NaN"):
        wb.quantize_int2(torch.tensor([[1.0, float("nan")]]))
    p = wb.pack_int2(torch.full((4, 16), 0.5))
    with pytest.raises(ValueError, match="scales"):
        wb.gemv_int2_scaled(p, torch.ones(16), torch.ones(3), torch.empty(4))
    with pytest.raises(ValueError, match="`Y` has 3 elements"):
        wb.gemv_int2(p, torch.ones(16), torch.empty(3))
    with pytest.raises(ValueError, match="`x` has 40 features, `packed_weight` has 16 columns"):
        wb.linear_int2(torch.ones(1, 40), p)


def test_gpu_routes_are_asked_of_the_native_planner(monkeypatch):
    # No threshold of the planner lives in Python: whether one token of W2A8 is quantized inside
    # the kernel (one launch) and whether a batch takes cuBLAS are the Rust route's answers
    # (`_native.route`, Gpu::route / Gpu::route_quantized), asked once per device and shape.
    from warp_bitnet import _cuda, functional

    assert not hasattr(functional, "ONE_LAUNCH_MAX_COLS") and not hasattr(_cuda, "ONE_LAUNCH_MAX_COLS")
    asked = []
    # A fake planner: the quantizing kernel holds 1000 columns on device 0, 500 on device 1.
    room = {0: 1000, 1: 500}

    def route(device, rows, cols, levels, x_dtype, batch, quantize_x=False):
        asked.append((device, rows, cols, levels, x_dtype, batch, quantize_x))
        if quantize_x and batch == 1 and cols <= room[device]:
            return "one_launch"
        return "dense" if batch > 100 else "groups"

    monkeypatch.setattr(_cuda._native, "route", route)
    monkeypatch.setattr(_cuda, "_route", functools.lru_cache(maxsize=None)(_cuda._route.__wrapped__))
    cuda0, cuda1 = torch.device("cuda", 0), torch.device("cuda", 1)
    assert functional.one_launch(cuda0, 64, 800, "ternary", torch.float16)
    assert functional.one_launch(cuda0, 64, 800, "ternary", torch.float16)  # cached: asked once
    assert not functional.one_launch(cuda1, 64, 800, "int2", torch.bfloat16)
    assert not functional.one_launch(cuda0, 64, 1001, "ternary", torch.float16)
    assert functional.dense_path(101, cuda0, 64, 800, "ternary", True)
    assert not functional.dense_path(100, cuda0, 64, 800, "ternary", False)
    assert asked == [
        (0, 64, 800, "ternary", "float16", 1, True),
        (1, 64, 800, "int2", "bfloat16", 1, True),
        (0, 64, 1001, "ternary", "float16", 1, True),
        (0, 64, 800, "ternary", "float16", 101, True),
        (0, 64, 800, "ternary", "float16", 100, False),
    ]


@pytest.mark.parametrize("m, n", [(7, 100), (300, 2000)])
def test_words_that_need_a_host_copy_stay_alive_through_the_native_call(m, n):
    # A non-contiguous view makes `host()` copy; the copy must outlive the native call that
    # reads it by address (it did not: freed memory read as invalid codes on CUDA tensors).
    W = torch.randint(-1, 2, (m, n)).float()
    words = wb.pack_ternary(W)
    view = words.t().contiguous().t()
    assert not view.is_contiguous()
    for _ in range(20):
        wb.validate_packed(view, n)
        assert torch.equal(wb.unpack_ternary(view, n).float(), W)
