"""Writes a small random BitNet model as a Hugging Face folder that `warp-bitnet serve` loads.

`transformers.BitNetForCausalLM(BitNetConfig(...)).save_pretrained(dir)` with dense float
weights (which the engine quantizes as transformers' online AutoBitLinear), and, unless
``--no-tokenizer``, a byte-level BPE tokenizer trained here on a few sentences, with a chat
template. The server tests and the CPU load test use it (no model can be downloaded there).

    python examples/tiny_model.py /tmp/tiny --hidden 128 --layers 2 --no-tokenizer --vocab 1000
"""

from __future__ import annotations

import argparse
import json
import pathlib

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write_tokenizer(d: pathlib.Path, vocab: int) -> int:
    """A byte-level BPE tokenizer (BOS `<s>` = 0, EOS `</s>` = 1); returns its vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the quick brown fox jumps over the lazy dog", "hello world", "héllo wörld ✓ naïve café"] * 10
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(d / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHAT_TEMPLATE}
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size()


def write_model(
    d: pathlib.Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 300,
    max_positions: int = 256,
    tokenizer: bool = True,
    seed: int = 0,
) -> pathlib.Path:
    """Writes the model (and tokenizer) into `d`; returns `d`."""
    import torch
    import transformers

    d.mkdir(parents=True, exist_ok=True)
    if tokenizer:
        vocab = write_tokenizer(d, vocab)
    torch.manual_seed(seed)
    config = transformers.BitNetConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=1,
    )
    transformers.BitNetForCausalLM(config).save_pretrained(d)
    saved = json.loads((d / "config.json").read_text())
    saved["quantization_config"] = {
        "quant_method": "bitnet",
        "linear_class": "autobitlinear",
        "quantization_mode": "online",
    }
    (d / "config.json").write_text(json.dumps(saved))
    return d


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=pathlib.Path)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=300, help="target vocabulary (the tokenizer may learn fewer)")
    p.add_argument("--max-positions", type=int, default=256)
    p.add_argument("--no-tokenizer", action="store_true", help="prompts must then be token ids")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    write_model(
        a.dir,
        hidden=a.hidden,
        layers=a.layers,
        heads=a.heads,
        kv_heads=a.kv_heads,
        vocab=a.vocab,
        max_positions=a.max_positions,
        tokenizer=not a.no_tokenizer,
        seed=a.seed,
    )


if __name__ == "__main__":
    main()
