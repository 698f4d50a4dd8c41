"""examples/random_gguf.py (the file bitnet.cpp and our engine both time) writes a GGUF file that the
engine loads: a shrunken architecture of the same kind, its I2_S tensors packed by the script, its
synthetic tokenizer read back from the metadata."""

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import warp_bitnet as wb


def _script():
    path = Path(__file__).parents[2] / "examples" / "random_gguf.py"
    spec = importlib.util.spec_from_file_location("random_gguf", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_the_engine_loads_the_written_file(tmp_path):
    rg = _script()
    arch = replace(
        rg.ARCHS["bitnet-2b4t"], vocab=1280, hidden=256, inter=384, layers=2, heads=4, kv_heads=2, head_dim=64
    )
    path = tmp_path / "m.gguf"
    rg.write(path, "tiny", arch, seed=3)
    # The header, then every tensor at its aligned offset: nothing missing, nothing extra.
    data_bytes = sum(rg._pad(rg.nbytes(dims, t)) for _, dims, t in rg.tensor_plan(arch))
    assert 0 < path.stat().st_size - data_bytes < 64 << 10
    engine = wb.Engine.load(path, device="cpu")
    assert engine.vocab_size == arch.vocab
    ids = engine.encode("ab!c~", add_special_tokens=False)
    assert ids and all(0 <= i < arch.vocab - rg.SPECIALS for i in ids)
    out = engine.generate([arch.vocab - rg.SPECIALS, *ids], max_new_tokens=4, stop_on_eos=False)
    assert len(out) == 4 and all(0 <= i < arch.vocab for i in out)
    assert np.isfinite(engine.logits(ids).numpy()).all()


def test_i2s_packing_matches_the_documented_layout():
    rg = _script()
    codes = np.random.default_rng(0).integers(0, 3, size=256, dtype=np.uint8)
    packed = rg.pack_i2s(codes, 0.5)
    assert len(packed) == 256 // 4 + 32
    for b in range(2):
        for p in range(32):
            c = codes[128 * b :]
            expect = c[p] << 6 | c[32 + p] << 4 | c[64 + p] << 2 | c[96 + p]
            assert packed[32 * b + p] == expect
    assert np.frombuffer(packed[64:68], "<f4")[0] == 0.5
