"""Modules: BitLinear, BitLinearTrain (STE), conversion, quantize/unquantize, compat
modules, and a small training run against fp32."""

import time

import pytest
import torch
import warp_bitnet as wb
from torch import nn


def test_bitlinear_from_linear_and_state_dict_round_trip():
    torch.manual_seed(0)
    lin = nn.Linear(40, 7)
    for method in ("absmean", "absmean_row"):
        layer = wb.BitLinear.from_linear(lin, method)
        x = torch.randn(3, 2, 40)
        packed, scale = wb.quantize_ternary(lin.weight, method)
        want = wb.linear(x, packed, scale, lin.bias)
        torch.testing.assert_close(layer(x), want)
        fresh = wb.BitLinear(40, 7)
        assert set(layer.state_dict()) == {"weight_packed", "weight_scale", "bias"}  # no GPU layout saved
        fresh.load_state_dict(layer.state_dict())
        torch.testing.assert_close(fresh(x), want)
        assert fresh.weight_t2 is None  # made only on a CUDA device


def test_bitlinear_cast_keeps_the_float32_scale():
    torch.manual_seed(1)
    lin = nn.Linear(40, 7)
    for method in ("absmean", "absmean_row"):
        layer = wb.BitLinear.from_linear(lin, method)
        scale = layer.weight_scale.clone()
        assert scale.to(torch.bfloat16).float().ne(scale).any()  # a cast would round it
        layer.to(torch.bfloat16)
        assert layer.weight_scale.dtype == torch.float32 and torch.equal(layer.weight_scale, scale)
        assert layer.bias.dtype == torch.bfloat16  # the rest follows the cast
        layer.half()
        assert torch.equal(layer.weight_scale, scale)


def test_ste_gradients():
    torch.manual_seed(1)
    layer = wb.BitLinearTrain(16, 4, quantize_activations=False)
    x = torch.randn(5, 16, requires_grad=True)
    layer(x).sum().backward()
    gamma = layer.weight.detach().abs().mean()
    wq = (layer.weight.detach() / gamma).round().clamp(-1, 1) * gamma
    # Master weights: the gradient of the quantized product, unchanged.
    torch.testing.assert_close(layer.weight.grad, torch.ones(5, 4).T @ x.detach())
    # Input: through the quantized weights.
    torch.testing.assert_close(x.grad, torch.ones(5, 4) @ wq)


def test_absmax_option_is_the_old_behaviour():
    layer = wb.BitLinearTrain(4, 1, bias=False, weight_method="absmax", quantize_activations=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 1.9, -2.0, 2.1]]))
    y = layer(torch.ones(1, 4))
    assert y.item() == pytest.approx(4.0 * (1 + 0 + 0 + 1))  # -0.5 ties to 0
    with pytest.raises(ValueError, match="weight_method"):
        wb.BitLinearTrain(4, 1, weight_method="median")


class MLP(nn.Module):
    def __init__(self, d_in=32, hidden=256, classes=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        self.lm_head = nn.Linear(classes, classes)

    def forward(self, x):
        return self.lm_head(self.fc2(torch.relu(self.fc1(x))))


def test_convert_skips_and_quantize_matches_training_forward():
    torch.manual_seed(2)
    model = MLP()
    wb.convert_to_bitlinear(model)
    assert isinstance(model.fc1, wb.BitLinearTrain) and isinstance(model.fc2, wb.BitLinearTrain)
    assert type(model.lm_head) is nn.Linear
    x = torch.randn(8, 32)
    with torch.no_grad():
        train_out = model(x)
        wb.quantize(model)
        assert isinstance(model.fc1, wb.BitLinear)
        torch.testing.assert_close(model(x), train_out, rtol=1e-4, atol=1e-4)
        wb.unquantize(model)
        assert isinstance(model.fc1, wb.BitLinearTrain)
        torch.testing.assert_close(model(x), train_out, rtol=1e-4, atol=1e-4)
    copy = wb.convert_to_bitlinear(MLP(), inplace=False)
    assert isinstance(copy.fc1, wb.BitLinearTrain)


def test_compatibility_modules():
    import bit_linear_train
    import bitnet_int2_cuda
    import warp_bitnet_cuda

    assert bit_linear_train.BitLinearTrain is wb.BitLinearTrain
    assert bit_linear_train.convert_to_bitlinear is wb.convert_to_bitlinear
    W = torch.randint(-1, 2, (8, 32)).float()
    X = torch.randn(32)
    Y = torch.zeros(8)
    warp_bitnet_cuda.gemv(warp_bitnet_cuda.pack_ternary(W), X, Y)
    torch.testing.assert_close(Y, W @ X, rtol=1e-5, atol=1e-5)
    L = torch.randint(0, 4, (8, 32)).float() - 1.5
    warp_bitnet_cuda.gemv_int2(warp_bitnet_cuda.pack_int2(L), X, Y)
    torch.testing.assert_close(Y, L @ X, rtol=1e-5, atol=1e-5)
    s = torch.rand(8) + 0.5
    warp_bitnet_cuda.gemv_int2_scaled(warp_bitnet_cuda.pack_int2(L), X, s, Y)
    torch.testing.assert_close(Y, (L @ X) * s, rtol=1e-5, atol=1e-5)
    Y.zero_()
    bitnet_int2_cuda.gemv_int2_scaled(bitnet_int2_cuda.pack_int2(L), X, s, Y)
    torch.testing.assert_close(Y, (L @ X) * s, rtol=1e-5, atol=1e-5)
    bitnet_int2_cuda.gemv_int2(bitnet_int2_cuda.pack_int2(L), X, Y)
    torch.testing.assert_close(Y, L @ X, rtol=1e-5, atol=1e-5)


def make_task(n, d=32, classes=4, seed=0):
    """A synthetic classification task: labels from a fixed random 2-layer teacher
    (the same for every seed); `seed` draws the inputs."""
    g = torch.Generator().manual_seed(1234)
    w1, w2 = torch.randn(d, 64, generator=g), torch.randn(64, classes, generator=g)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return x, (torch.tanh(x @ w1) @ w2).argmax(1)


def train(model, x, y, steps=600, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=torch.Generator().manual_seed(step))
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_training_reaches_fp32_accuracy():
    """BitLinearTrain (ternary weights, int8 activations) within 2 points of fp32."""
    x, y = make_task(32768)
    xt, yt = make_task(2048, seed=1)
    start = time.time()
    torch.manual_seed(3)
    fp32 = nn.Sequential(nn.Linear(32, 512), nn.ReLU(), nn.Linear(512, 4))
    ternary = wb.convert_to_bitlinear(nn.Sequential(nn.Linear(32, 512), nn.ReLU(), nn.Linear(512, 4)))
    ternary.load_state_dict(fp32.state_dict())
    loss_fp32, loss_t = train(fp32, x, y), train(ternary, x, y)
    acc_fp32, acc_t = accuracy(fp32, xt, yt), accuracy(ternary, xt, yt)
    wb.quantize(ternary)
    acc_frozen = accuracy(ternary, xt, yt)
    print(f"fp32 acc {acc_fp32:.4f} loss {loss_fp32:.4f}; ternary acc {acc_t:.4f} loss {loss_t:.4f}; "
          f"frozen {acc_frozen:.4f}; {time.time() - start:.1f} s")  # fmt: skip
    assert acc_t >= acc_fp32 - 0.02
    assert abs(acc_frozen - acc_t) <= 0.01


def test_bitlinear_from_hf_bitnet_is_the_w1_58a8_product():
    from test_functional import hf_pack, ternary

    gen = torch.Generator().manual_seed(12)
    W = ternary(8, 24, gen)
    bias = torch.randn(8, generator=gen)
    layer = wb.BitLinear.from_hf_bitnet(hf_pack(W), torch.tensor(0.5), "bitlinear", bias=bias)
    x = torch.randn(3, 24, generator=gen)
    q, s = wb.quantize_activations_int8(x)
    want = (q.double() @ W.double().T) * s.double()[:, None] * 2.0 + bias.double()
    torch.testing.assert_close(layer(x).double(), want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="bias"):
        wb.BitLinear.from_hf_bitnet(hf_pack(W), 1.0, bias=torch.zeros(3))
