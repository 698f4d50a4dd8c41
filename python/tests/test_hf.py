"""transformers BitNet models on our layers: tiny random BitNetForCausalLM and LlamaForCausalLM
models built from BitNetConfig / LlamaConfig with transformers' BitNet layers (the real modeling
and BitNet integration code, synthetic weights), swapped with
``warp_bitnet.hf.swap_bitnet_linears``; logits and greedy generation must match transformers."""

import copy
import math
import struct

import pytest
import torch

transformers = pytest.importorskip("transformers")
bitnet = pytest.importorskip("transformers.integrations.bitnet")

import warp_bitnet as wb
from warp_bitnet.hf import swap_bitnet_linears


@pytest.fixture(autouse=True)
def _eager():
    # transformers' BitNet layers wrap their quantizers in torch.compile; eager is the same
    # math and needs no C++ compiler in CI.
    with torch._dynamo.config.patch(disable=True):
        yield


def tiny_model(linear_class: str, mode: str = "offline", seed: int = 0, arch: str = "bitnet"):
    """A 2-layer model of ``arch`` (BitNet, or a Llama-family model converted to ternary)
    with transformers' BitNet layers in place of its linear layers."""
    torch.manual_seed(seed)
    config_class, model_class = {
        "bitnet": (transformers.BitNetConfig, transformers.BitNetForCausalLM),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
    }[arch]
    config = config_class(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=None,
        pad_token_id=0,
    )
    model = model_class(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_()  # a residual stream of O(1), as in trained models
    quant = transformers.BitNetQuantConfig(linear_class=linear_class, quantization_mode=mode)
    dense = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    bitnet.replace_with_bitnet_linear(model, modules_to_not_convert=["lm_head"], quantization_config=quant)
    gen = torch.Generator().manual_seed(seed + 1)
    for name, m in model.named_modules():
        if isinstance(m, bitnet.BitLinear):
            # Synthetic checkpoint weights: random valid codes and 1 / gamma for a gamma of
            # trained layers (0.02 .. 0.04), which keeps the activations in a sane range.
            m.weight = torch.randint(0, 3, m.weight.shape, generator=gen).to(torch.uint8)
            m.weight_scale = 1 / (torch.rand(1, generator=gen) * 0.02 + 0.02)
            m.dtype = torch.float32
        elif isinstance(m, bitnet.AutoBitLinear):
            m.to_empty(device="cpu")
            with torch.no_grad():
                if mode == "online":
                    m.weight.copy_(dense[name])
                else:
                    m.weight.copy_(torch.randint(-1, 2, m.weight.shape, generator=gen).float())
                    m.weight_scale = torch.rand(1, generator=gen) * 0.02 + 0.02
    return model


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits.double()


@pytest.mark.parametrize("arch", ["bitnet", "llama"])
@pytest.mark.parametrize("linear_class,mode", [("bitlinear", "offline"), ("autobitlinear", "offline")])
def test_swapped_model_matches_transformers(linear_class, mode, arch):
    ref = tiny_model(linear_class, mode, arch=arch)
    ours = swap_bitnet_linears(copy.deepcopy(ref))
    kinds = {type(m) for m in ours.modules()}
    assert wb.BitLinear in kinds and bitnet.BitLinear not in kinds and bitnet.AutoBitLinear not in kinds
    assert isinstance(ours.lm_head, torch.nn.Linear) and not isinstance(ours.lm_head, wb.BitLinear)

    ids = torch.randint(2, 97, (2, 11), generator=torch.Generator().manual_seed(5))
    want, got = _logits(ref, ids), _logits(ours, ids)
    # Same integer products; only the order of float32 roundings of the scales differs.
    atol = 1e-5 * want.abs().max().item()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=atol)

    # The comparison has teeth: 10% on one layer's scale is far outside the tolerance.
    layer = ours.model.layers[0].mlp.down_proj
    saved = layer.weight_scale
    layer.weight_scale = saved * 1.1
    moved = (_logits(ours, ids) - want).abs().max().item()
    layer.weight_scale = saved
    diff = (got - want).abs().max().item()
    print(f"{arch} {linear_class}: max |ours - transformers| {diff:.2e}, after 10% on one scale {moved:.2e}")
    assert moved > 10 * atol

    prompt = ids[:1, :4]
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        assert torch.equal(ours.generate(prompt, **kwargs), ref.generate(prompt, **kwargs))


@pytest.mark.parametrize("arch", ["bitnet", "llama"])
def test_online_autobitlinear_quantizes_master_weights_like_transformers(arch):
    ref = tiny_model("autobitlinear", "online", arch=arch)
    ours = swap_bitnet_linears(copy.deepcopy(ref))
    ids = torch.randint(2, 97, (1, 9), generator=torch.Generator().manual_seed(6))
    want, got = _logits(ref, ids), _logits(ours, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())


def test_swap_errors():
    with pytest.raises(ValueError, match="no transformers BitNet layer"):
        swap_bitnet_linears(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    model = tiny_model("bitlinear")
    model.model.layers[0].mlp.up_proj.weight[0, 0] = 0xFF
    with pytest.raises(ValueError, match=r"layers\.0\.mlp\.up_proj.*row 0, column 0"):
        swap_bitnet_linears(model)


def test_convert_checkpoint_writes_our_packed_file(tmp_path):
    from safetensors.torch import load_file, save_file
    from test_functional import hf_pack

    gen = torch.Generator().manual_seed(13)
    W = torch.randint(-1, 2, (8, 40), generator=gen)
    norm = torch.randn(40)
    save_file(
        {"q.weight": hf_pack(W), "q.weight_scale": torch.tensor([4.0], dtype=torch.bfloat16), "norm.weight": norm},
        tmp_path / "model.safetensors",
    )
    (tmp_path / "config.json").write_text('{"quantization_config": {"linear_class": "bitlinear"}}')
    from warp_bitnet.hf import convert_checkpoint

    assert convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "packed.safetensors") == (1, 1)
    out = load_file(tmp_path / "packed.safetensors")
    assert torch.equal(out["q.weight.packed"], wb.pack_ternary(W))
    assert out["q.weight.scale"].item() == 0.25
    assert torch.equal(out["norm.weight"], norm)

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="linear_class"):
        convert_checkpoint(tmp_path / "model.safetensors", tmp_path / "packed.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    with pytest.raises(ValueError):
        convert_checkpoint(tmp_path / "bad.safetensors", tmp_path / "x", "autobitlinear")
    with pytest.raises(FileNotFoundError):
        convert_checkpoint(tmp_path / "missing.safetensors", tmp_path / "x", "autobitlinear")
    # A GGUF file is recognised by its magic (no config needed); a truncated one is a ValueError.
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(ValueError, match="GGUF"):
        convert_checkpoint(tmp_path / "bad.gguf", tmp_path / "x")
    with pytest.raises(ValueError, match="linear_class"):
        convert_checkpoint(tmp_path / "bad.gguf", tmp_path / "x", "bitlinear")


def test_model_benchmark_script_runs(tmp_path):
    """examples/bench_model.py (the tokens/s benchmark for GPUs) on a tiny model on the CPU."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "bench_model.py"
    spec = importlib.util.spec_from_file_location("bench_model", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    args = ["--tiny", "--device", "cpu", "--batch", "1", "2", "--new-tokens", "2", "--prefill", "8", "--reps", "1"]
    results = bench.main([*args, "--json", str(out)])
    assert json.loads(out.read_text()) == results
    # A smoke run: with one repetition on a busy CPU the decode difference (t(3 tokens) -
    # t(1 token)) is noise and may come out negative, so only its presence is checked.
    for model in ("dense", "warp-bitnet"):
        r = results["models"][model]
        assert r["prefill_ms"] > 0
        assert all(math.isfinite(r[k]) for k in ("tokens_per_s_b1", "tokens_per_s_b2"))


def i2s_pack(W: torch.Tensor, scale: float) -> bytes:
    """bitnet.cpp's I2_S bytes of row-major ternary weights, written from the layout: blocks of
    128 codes w + 1 in 32 bytes, byte p = c[p] << 6 | c[32 + p] << 4 | c[64 + p] << 2 | c[96 + p],
    then a 32-byte tail starting with the f32 scale."""
    c = (W.flatten().to(torch.int64) + 1).reshape(-1, 4, 32)
    packed = (c[:, 0] << 6) | (c[:, 1] << 4) | (c[:, 2] << 2) | c[:, 3]
    return bytes(packed.flatten().to(torch.uint8).tolist()) + struct.pack("<f", scale) + bytes(28)


def gguf_bytes(tensors) -> bytes:
    """A GGUF v3 file (alignment 32, one metadata string) of (name, dims, type, data) tensors."""

    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 1) + string("general.architecture")
    head += struct.pack("<I", 8) + string("bitnet-b1.58")
    infos, data, offset = b"", b"", 0
    for name, dims, ggml_type, payload in tensors:
        infos += string(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        infos += struct.pack("<IQ", ggml_type, offset)
        padded = payload + bytes(-len(payload) % 32)
        data, offset = data + padded, offset + len(padded)
    body = head + infos
    return body + bytes(-len(body) % 32) + data


def test_convert_checkpoint_reads_bitnet_cpp_gguf(tmp_path):
    from safetensors.torch import load_file
    from warp_bitnet.hf import convert_checkpoint

    W = torch.randint(-1, 2, (3, 256), generator=torch.Generator().manual_seed(14))
    norm = torch.randn(256)
    path = tmp_path / "model.gguf"
    path.write_bytes(
        gguf_bytes(
            [
                ("blk.0.ffn_up.weight", (256, 3), 36, i2s_pack(W, 0.625)),
                ("blk.0.attn_norm.weight", (256,), 0, norm.numpy().tobytes()),
            ]
        )
    )
    assert convert_checkpoint(path, tmp_path / "packed.safetensors") == (1, 1)
    out = load_file(tmp_path / "packed.safetensors")
    assert torch.equal(out["blk.0.ffn_up.weight.packed"], wb.pack_ternary(W))
    assert out["blk.0.ffn_up.weight.scale"].item() == 0.625
    assert torch.equal(out["blk.0.attn_norm.weight"], norm)


@pytest.mark.parametrize("arch", ["bitnet", "llama"])
def test_fused_projections_match_the_separate_layers(arch):
    ref = tiny_model("autobitlinear", "offline", arch=arch)
    separate = swap_bitnet_linears(copy.deepcopy(ref), fuse=False)
    fused = swap_bitnet_linears(copy.deepcopy(ref))
    attn, mlp = fused.model.layers[0].self_attn, fused.model.layers[0].mlp
    assert isinstance(attn.qkv_proj, wb.hf.FusedBitLinear) and isinstance(mlp.gate_up_proj, wb.hf.FusedBitLinear)
    assert not any(k.startswith("model.layers.0.self_attn.q_proj") for k in fused.state_dict())
    ids = torch.randint(2, 97, (2, 11), generator=torch.Generator().manual_seed(6))
    assert torch.equal(_logits(fused, ids), _logits(separate, ids))
    assert fused.model.layers[0].self_attn.qkv_proj._x is None  # nothing held between calls
    # torch.compile traces the hand-out of parts in one graph.
    compiled = torch.compile(fused.model.layers[0].mlp, backend="eager", fullgraph=True)
    x = torch.randn(2, 3, fused.config.hidden_size)
    torch.testing.assert_close(compiled(x), separate.model.layers[0].mlp(x))


def test_fused_part_asked_again_recomputes():
    torch.manual_seed(9)
    layers = [wb.BitLinear.from_linear(torch.nn.Linear(16, n, bias=False)) for n in (8, 4)]
    fused = wb.hf.FusedBitLinear(layers)
    x = torch.randn(2, 16)
    torch.testing.assert_close(fused.part(x, 0), layers[0](x))
    x.add_(1.0)  # the same tensor, changed: asking part 0 again must not reuse the old result
    torch.testing.assert_close(fused.part(x, 0), layers[0](x))
    torch.testing.assert_close(fused.part(x, 1), layers[1](x))
    assert fused._x is None


# bitnet.cpp's GGUF names (gguf-py's tensor map for the BitNet architecture), written out here
# rather than taken from warp_bitnet.hf, so a wrong table there fails this test.
GGUF_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.attn_sub_norm": "attn_sub_norm",
    "mlp.ffn_sub_norm": "ffn_sub_norm",
}


def bitnet_cpp_gguf(model) -> bytes:
    """The GGUF file bitnet.cpp would hold for ``model`` (offline AutoBitLinear layers): I2_S
    projections with their scale, F32 norms, embeddings and output."""
    tensors = []
    for name, m in model.named_modules():
        if isinstance(m, bitnet.AutoBitLinear):
            layer, _, rest = name.removeprefix("model.layers.").partition(".")
            W = m.weight.detach().to(torch.int64)
            gguf = f"blk.{layer}.{GGUF_NAMES[rest]}.weight"
            tensors.append((gguf, (W.shape[1], W.shape[0]), 36, i2s_pack(W, m.weight_scale.item())))
    for name, t in model.state_dict().items():
        if name.startswith("model.layers.") and name.endswith(".weight") and t.dim() == 1:
            layer, _, rest = name.removeprefix("model.layers.").partition(".")
            gguf = f"blk.{layer}.{GGUF_NAMES[rest.removesuffix('.weight')]}.weight"
        elif name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
            gguf = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm"}.get(
                name, "output"
            ) + ".weight"
        else:
            continue
        data = t.detach().float().contiguous()
        tensors.append((gguf, tuple(reversed(data.shape)), 0, data.numpy().tobytes()))
    return gguf_bytes(tensors)


def test_bitnet_cpp_gguf_loads_into_a_transformers_model(tmp_path):
    from warp_bitnet.hf import convert_checkpoint, load_packed

    ref = tiny_model("autobitlinear", "offline", arch="bitnet")
    (tmp_path / "model.gguf").write_bytes(bitnet_cpp_gguf(ref))
    # 7 projections per layer; 4 norms per layer, embeddings, final norm and output kept.
    assert convert_checkpoint(tmp_path / "model.gguf", tmp_path / "packed.safetensors") == (2 * 7, 2 * 4 + 3)
    fresh = transformers.BitNetForCausalLM(ref.config).eval()
    ours = load_packed(fresh, tmp_path / "packed.safetensors")
    assert isinstance(ours.model.layers[1].self_attn.qkv_proj, wb.hf.FusedBitLinear)

    ids = torch.randint(2, 97, (2, 11), generator=torch.Generator().manual_seed(5))
    want, got = _logits(ref, ids), _logits(ours, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        assert torch.equal(ours.generate(ids[:1, :4], **kwargs), ref.generate(ids[:1, :4], **kwargs))

    # The same file with transformers' names (as converted from a Hugging Face checkpoint).
    from safetensors import safe_open
    from safetensors.torch import save_file
    from warp_bitnet.hf import _hf_name

    with safe_open(tmp_path / "packed.safetensors", framework="pt") as f:
        meta, packed = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    rename = {k: _hf_name(k) for k in packed if not k.endswith((".packed", ".scale"))}
    rename.update(
        {
            f"{m}.{s}": f"{_hf_name(m)}.{s}"
            for m in (k[:-7] for k in packed if k.endswith(".packed"))
            for s in ("packed", "scale")
        }
    )
    hf_meta = {(_hf_name(k[:-5]) + ".cols" if k.endswith(".cols") else k): v for k, v in meta.items()}
    save_file({rename[k]: v for k, v in packed.items()}, tmp_path / "hf.safetensors", metadata=hf_meta)
    by_name = load_packed(transformers.BitNetForCausalLM(ref.config).eval(), tmp_path / "hf.safetensors")
    assert torch.equal(_logits(by_name, ids), got)


def test_load_packed_refuses_what_it_cannot_load(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    from warp_bitnet.hf import convert_checkpoint, load_packed

    ref = tiny_model("autobitlinear", "offline", arch="bitnet")
    (tmp_path / "model.gguf").write_bytes(bitnet_cpp_gguf(ref))
    convert_checkpoint(tmp_path / "model.gguf", tmp_path / "packed.safetensors")
    with safe_open(tmp_path / "packed.safetensors", framework="pt") as f:
        meta, packed = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118

    def refused(match, model=None, tensors=packed, metadata=meta):
        model = model or transformers.BitNetForCausalLM(ref.config)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        save_file(tensors, tmp_path / "case.safetensors", metadata=metadata)
        with pytest.raises(ValueError, match=match):
            load_packed(model, tmp_path / "case.safetensors")
        # Refused before anything changed.
        assert not any(isinstance(m, wb.BitLinear) for m in model.modules())
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    small = copy.deepcopy(ref.config)
    small.intermediate_size = 32
    refused(r"model\.layers\.\d\.mlp\.\w+_proj\.weight", transformers.BitNetForCausalLM(small))
    refused("not a packed ternary file", metadata={})
    refused("does not set model.norm.weight", tensors={k: v for k, v in packed.items() if k != "output_norm.weight"})
    refused("has no transformers name", tensors={**packed, "blk.0.extra.weight": torch.zeros(3)})
    no_cols = {k: v for k, v in meta.items() if k != "blk.1.ffn_down.weight.cols"}
    refused(r"down_proj\.weight.*None columns", metadata=no_cols)
    refused("scales for", tensors={**packed, "blk.0.attn_q.weight.scale": torch.ones(5)})

    # A Llama-family GGUF (no sub-norms): llama.cpp permutes its q/k rows.
    llama = tiny_model("autobitlinear", "offline", arch="llama")
    (tmp_path / "llama.gguf").write_bytes(bitnet_cpp_gguf(llama))
    convert_checkpoint(tmp_path / "llama.gguf", tmp_path / "llama.safetensors")
    with pytest.raises(ValueError, match="Llama family"):
        load_packed(transformers.LlamaForCausalLM(llama.config), tmp_path / "llama.safetensors")
