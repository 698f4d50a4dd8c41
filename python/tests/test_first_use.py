"""What a new user runs into first (issue 21): argument errors that name the mistake,
empty batches, Python-number scales, and conversions that say when they change nothing.
CPU only; the CUDA path shares the checks (test_gpu.py)."""

import warnings

import pytest
import torch
import warp_bitnet as wb
from torch import nn


def random_weights(m, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, n, generator=gen)


def reference(x, W, scale, bias=None):
    """``x . Wtᵀ * scale + bias`` in float64 from the ternary levels (the oracle)."""
    y = x.double() @ W.double().T * scale
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("linear, quantize", [(wb.linear, wb.quantize_ternary), (wb.linear_int2, wb.quantize_int2)])
def test_too_few_features_is_reported_as_a_feature_count(linear, quantize):
    packed, scale = quantize(random_weights(5, 53, 1))
    with pytest.raises(ValueError, match="`x` has 52 features, `packed_weight` has 53 columns"):
        linear(torch.randn(3, 52), packed, scale)


@pytest.mark.parametrize("linear, quantize", [(wb.linear, wb.quantize_ternary), (wb.linear_int2, wb.quantize_int2)])
def test_too_many_features_are_refused_not_multiplied_by_padding(linear, quantize):
    packed, scale = quantize(random_weights(5, 53, 2))
    with pytest.raises(ValueError, match="`x` has 64 features, `packed_weight` has 53 columns"):
        linear(torch.randn(3, 64), packed, scale)


def test_words_of_unknown_origin_still_name_the_feature_count():
    # Words loaded from elsewhere (a copy carries no recorded column count): the padding
    # check finds the weights past x's features and says so in those terms.
    gen = torch.Generator().manual_seed(3)
    W = torch.randint(-1, 2, (4, 53), generator=gen).float()
    W[:, 52] = 1.0
    packed = wb.pack_ternary(W).clone()
    with pytest.raises(ValueError, match="`x` has 52 features, but `packed_weight` holds weights in column 52"):
        wb.linear(torch.randn(2, 52), packed)
    with pytest.raises(ValueError, match="`x` has 80 features, `packed_weight` has 4 words per row"):
        wb.linear(torch.randn(2, 80), packed)
    # With in_features the padding error stays about the weight.
    with pytest.raises(ValueError, match="padding at row 0, column 52"):
        wb.linear(torch.randn(2, 52), packed, in_features=52)


def test_right_feature_count_matches_the_reference():
    W = random_weights(7, 53, 4)
    packed, scale = wb.quantize_ternary(W)
    levels = wb.unpack_ternary(packed, 53).float()
    x = torch.randn(3, 53, generator=torch.Generator().manual_seed(5))
    y = wb.linear(x, packed, scale)
    torch.testing.assert_close(y.double(), reference(x, levels, scale.double()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(0, 53), (2, 0, 53)])
def test_empty_batches_give_empty_outputs_like_f_linear(shape):
    packed, scale = wb.quantize_ternary(random_weights(5, 53, 6))
    bias = torch.randn(5)
    x = torch.randn(*shape)
    want = nn.functional.linear(x, torch.randn(5, 53), bias)
    for y in (
        wb.linear(x, packed, scale, bias),
        wb.linear_int2(x, *wb.quantize_int2(random_weights(5, 53, 7)), bias),
        wb.BitLinear.from_packed(packed, scale, 53, bias)(x),
    ):
        assert y.shape == want.shape and y.dtype == want.dtype


def test_python_numbers_are_accepted_as_scales():
    W = random_weights(6, 40, 8)
    packed, _ = wb.quantize_ternary(W)
    levels = wb.unpack_ternary(packed, 40).float()
    x = torch.randn(2, 40, generator=torch.Generator().manual_seed(9))
    for s in (0.37, 3):
        torch.testing.assert_close(wb.linear(x, packed, s).double(), reference(x, levels, s), rtol=1e-5, atol=1e-5)
    packed2, _ = wb.quantize_int2(W)
    levels2 = wb.unpack_int2(packed2, 40)
    torch.testing.assert_close(
        wb.linear_int2(x, packed2, 0.5).double(), reference(x, levels2, 0.5), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(TypeError, match="`scale` must be a torch.Tensor"):
        wb.linear(x, packed, "0.5")


def test_pack_int2_takes_integer_codes_as_unpack_int2_gives_them():
    gen = torch.Generator().manual_seed(10)
    codes = torch.randint(0, 4, (5, 37), generator=gen)
    for dtype in (torch.int64, torch.int32, torch.uint8, torch.int8):
        packed = wb.pack_int2(codes.to(dtype))
        assert torch.equal(packed, wb.pack_int2(codes.float() - 1.5))
        assert torch.equal(wb.unpack_int2(packed, 37) + 1.5, codes.float())
    with pytest.raises(ValueError, match="codes 0, 1, 2 and 3"):
        wb.pack_int2(torch.tensor([[-1, 0, 1]]))


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 8)
        self.lm_head = nn.Linear(8, 4)


@pytest.mark.parametrize("fn", [wb.convert_to_bitlinear, wb.quantize, wb.unquantize])
def test_model_functions_type_check_their_argument(fn):
    with pytest.raises(TypeError, match=f"{fn.__name__}: `model` must be a torch.nn.Module, got int"):
        fn(42)


def test_conversions_that_change_nothing_warn():
    with pytest.warns(UserWarning, match="convert_to_bitlinear changed nothing: `model` has no nn.Linear"):
        wb.convert_to_bitlinear(nn.Sequential(nn.ReLU()))
    only_head = nn.Sequential()
    only_head.add_module("lm_head", nn.Linear(4, 4))
    with pytest.warns(UserWarning, match="outside skip=\\('lm_head',\\)"):
        wb.convert_to_bitlinear(only_head)
    with pytest.warns(UserWarning, match="quantize changed nothing"):
        wb.quantize(TwoLayers())
    with pytest.raises(TypeError, match="`skip` must be a tuple"):
        wb.convert_to_bitlinear(TwoLayers(), skip="lm_head")


def test_conversions_that_change_something_do_not_warn():
    model = TwoLayers()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wb.convert_to_bitlinear(model)
        wb.quantize(model)
    assert isinstance(model.fc, wb.BitLinear) and type(model.lm_head) is nn.Linear
