"""The native engine against transformers: tiny random BitNetForCausalLM / LlamaForCausalLM
checkpoints with BitNet quantization, written by ``save_pretrained`` (pre-packed U8 weights as
microsoft/bitnet-b1.58-2B-4T ships them, float ternary weights of the offline AutoBitLinear, and
dense master weights quantized on load), loaded by ``warp_bitnet.Engine``: last-position logits
within 1e-4 (relative to the largest logit) of transformers' float32 forward, and greedy
generation identical for 32 tokens."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
bitnet = pytest.importorskip("transformers.integrations.bitnet")

import warp_bitnet as wb

VOCAB = 97


@pytest.fixture(autouse=True)
def _eager():
    # transformers' BitNet layers wrap their quantizers in torch.compile; eager is the same math.
    with torch._dynamo.config.patch(disable=True):
        yield


def build(arch: str, linear_class: str, mode: str, act_norm: bool = False, tie: bool = False, seed: int = 0):
    """A 2-layer model with transformers' BitNet layers and synthetic weights of trained-like scale."""
    torch.manual_seed(seed)
    config_class, model_class = {
        "bitnet": (transformers.BitNetConfig, transformers.BitNetForCausalLM),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    }[arch]
    config = config_class(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=tie,
        rms_norm_eps=1e-5,
    )
    model = model_class(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_()
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    quant = transformers.BitNetQuantConfig(
        linear_class=linear_class, quantization_mode=mode, use_rms_norm=act_norm, rms_norm_eps=1e-6
    )
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    bitnet.replace_with_bitnet_linear(model, modules_to_not_convert=["lm_head"], quantization_config=quant)
    model.config.quantization_config = quant
    gen = torch.Generator().manual_seed(seed + 1)
    for name, m in model.named_modules():
        if isinstance(m, bitnet.BitLinear):
            m.weight = torch.randint(0, 3, m.weight.shape, generator=gen).to(torch.uint8)
            m.weight_scale = 1 / (torch.rand(1, generator=gen) * 0.02 + 0.02)
            m.dtype = torch.float32
        elif isinstance(m, (bitnet.AutoBitLinear,)):
            m.to_empty(device="cpu")
            with torch.no_grad():
                if mode == "online":
                    m.weight.copy_(dense[name] * 40)  # master weights of O(1 / sqrt(fan_in)) after absmean
                else:
                    m.weight.copy_(torch.randint(-1, 2, m.weight.shape, generator=gen).float())
                    m.weight_scale = torch.rand(1, generator=gen) * 0.02 + 0.02
        if getattr(m, "rms_norm", None) is not None:
            with torch.no_grad():
                m.rms_norm.to_empty(device="cpu")
                m.rms_norm.weight.copy_(1 + 0.1 * torch.randn(m.rms_norm.weight.shape, generator=gen))
    return model


def save(model, path, packed_u8: bool = False, dtype=None):
    """``save_pretrained``; with ``packed_u8`` the offline AutoBitLinear weights are packed to U8 as
    the 2B-4T checkpoint stores them (transformers unpacks them on load)."""
    # Parameters only: RoPE's inv_freq buffer must stay float32.
    params = list(model.parameters()) if dtype is not None else []
    for p in params:
        p.data = p.data.to(dtype)
    model.save_pretrained(path, safe_serialization=True)
    for p in params:
        p.data = p.data.float()
    if packed_u8:
        from safetensors.torch import load_file, save_file

        file = next(path.glob("*.safetensors"))
        tensors = load_file(file)
        for name in list(tensors):
            t = tensors[name]
            if name.endswith("_proj.weight") and t.is_floating_point():
                tensors[name] = bitnet.pack_weights(t.to(torch.int8).clone())
        save_file(tensors, file, metadata={"format": "pt"})
    return path


def ref_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


VARIANTS = {
    # name: (arch, linear_class, mode, act_norm, tie, packed_u8, dtype)
    "bitnet-bitlinear-u8": ("bitnet", "bitlinear", "offline", False, True, False, None),
    "bitnet-autobitlinear-u8": ("bitnet", "autobitlinear", "offline", False, True, True, None),
    "bitnet-autobitlinear-float-ternary": ("bitnet", "autobitlinear", "offline", False, False, False, None),
    "llama-bitlinear-u8": ("llama", "bitlinear", "offline", False, False, False, None),
    "llama-online-dense-f32": ("llama", "autobitlinear", "online", False, False, False, None),
    "llama-online-dense-bf16-actnorm": ("llama", "autobitlinear", "online", True, False, False, torch.bfloat16),
    "bitnet-online-dense-f16": ("bitnet", "autobitlinear", "online", False, True, False, torch.float16),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_engine_matches_transformers(variant, tmp_path):
    arch, linear_class, mode, act_norm, tie, packed_u8, dtype = VARIANTS[variant]
    model = build(arch, linear_class, mode, act_norm, tie)
    # With a dtype, the model is rounded to it, saved, and cast back to float32: the reference
    # runs the very values the checkpoint holds.
    save(model, tmp_path, packed_u8, dtype)
    engine = wb.Engine.load(tmp_path, max_context=64)
    assert engine.vocab_size == VOCAB

    gen = torch.Generator().manual_seed(3)
    for length in (1, 7, 19):
        ids = torch.randint(3, VOCAB, (length,), generator=gen).tolist()
        want = ref_logits(model, ids)
        got = engine.logits(ids)
        scale = want.abs().max().item()
        diff = (got - want).abs().max().item()
        assert diff <= 1e-4 * scale, f"{variant}, {length} tokens: max diff {diff:.3e}, scale {scale:.3e}"

    prompt = torch.randint(3, VOCAB, (4,), generator=gen)
    with torch.no_grad():
        want = model.generate(prompt[None], max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    got = engine.generate(prompt, 32, stop_on_eos=False)
    assert got == want[0, 4:].tolist()


def test_the_comparison_has_teeth(tmp_path):
    """10% on one layer's scale moves the logits far beyond the tolerance."""
    model = build("bitnet", "bitlinear", "offline", tie=True)
    save(model, tmp_path)
    ids = [5, 9, 33, 4]
    good = wb.Engine.load(tmp_path, max_context=64).logits(ids)
    from safetensors.torch import load_file, save_file

    file = next(tmp_path.glob("*.safetensors"))
    tensors = load_file(file)
    tensors["model.layers.1.mlp.down_proj.weight_scale"] *= 1.1
    save_file(tensors, file, metadata={"format": "pt"})
    moved = wb.Engine.load(tmp_path, max_context=64).logits(ids)
    assert (moved - good).abs().max() > 100 * 1e-4 * good.abs().max()


def test_bad_input_names_the_problem(tmp_path):
    model = build("bitnet", "bitlinear", "offline", tie=True)
    save(model, tmp_path)
    engine = wb.Engine.load(tmp_path, max_context=16)
    with pytest.raises(ValueError, match="prompt"):
        engine.generate([], 4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate([3], 0)
    with pytest.raises(ValueError, match="context"):
        engine.generate([3] * 16, 4)
    with pytest.raises(ValueError, match="97"):
        engine.logits([3, VOCAB])
    if not wb.cuda_available():
        # No driver: a typed error (RuntimeError), never a panic or a CPU engine.
        with pytest.raises((RuntimeError, ValueError), match="CUDA|cuda"):
            wb.Engine.load(tmp_path, device="cuda")
    with pytest.raises(ValueError, match="max_context"):
        wb.Engine.load(tmp_path, max_context=65)
    with pytest.raises(ValueError, match="tokenizer"):
        engine.encode("hi")

    config = json.loads((tmp_path / "config.json").read_text())
    for field, value, needle in [
        ("architectures", ["GPT2LMHeadModel"], "GPT2LMHeadModel"),
        ("num_hidden_layers", 1, "num_hidden_layers"),
        ("num_hidden_layers", 3, "model.layers.2"),
        ("hidden_size", 32, "hidden_size|embed_tokens"),
        ("quantization_config", None, "quantization_config"),
    ]:
        broken = dict(config, **{field: value})
        (tmp_path / "config.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=needle):
            wb.Engine.load(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        wb.Engine.load(tmp_path)
    (tmp_path / "config.json").unlink()
    with pytest.raises(ValueError, match="config.json"):
        wb.Engine.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    file = next(tmp_path.glob("*.safetensors"))
    file.write_bytes(file.read_bytes()[:1000])
    with pytest.raises(ValueError, match="safetensors"):
        wb.Engine.load(tmp_path)
