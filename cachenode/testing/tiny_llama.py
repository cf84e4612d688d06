"""A tiny random Llama with its own word-level tokenizer, in several safetensors shards (tests, benchmarks)."""

from __future__ import annotations

from pathlib import Path

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
    "the", "cache", "node", "reads", "model", "weights", "fast", "once", "per", "cluster", "blob", "block",
    "peer", "engine", "loads", "tokens", "from", "storage", "a", "and", "of", "to", "in", "is", "it"]


def build(folder: str | Path, *, hidden: int = 256, layers: int = 2, intermediate: int = 512,
          vocab: int = 512, shard: str = "200KB", seed: int = 0, dtype: str = "float32",
          max_positions: int = 256, words: list[str] | None = None) -> Path:
    """Write config, tokenizer and weights (shards of at most `shard`, plus the index) to `folder`.
    `words`: the tokenizer's vocabulary (default WORDS; the model has `vocab` ids at least)."""
    words = words or WORDS
    import torch
    from transformers import BertTokenizer, LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=max(vocab, len(words)), hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      num_key_value_heads=max(1, hidden // 128), max_position_embeddings=max_positions,
                      tie_word_embeddings=False, bos_token_id=2, eos_token_id=3, pad_token_id=0,
                      torch_dtype=dtype)
    model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    with torch.no_grad():  # random init is small; spread logits so greedy picks differ by position
        for p in model.parameters():
            p.normal_(0, 8 / hidden ** 0.5 if p.dim() > 1 else 0.1)
    model.save_pretrained(folder, max_shard_size=shard)
    BertTokenizer(vocab={w: i for i, w in enumerate(words)}).save_pretrained(folder)
    return folder


def layers_for(size: int, hidden: int = 2048, intermediate: int = 5632, vocab: int = 8192,
               bytes_per_param: int = 4) -> int:
    """How many layers give a checkpoint of about `size` bytes with these widths (as build() makes
    them: head dim 64, half as many KV heads as query heads, untied embeddings)."""
    attention = 2 * hidden * hidden + 2 * hidden * (hidden // 2)
    per_layer = bytes_per_param * (attention + 3 * hidden * intermediate + 2 * hidden)
    return max(1, round((size - bytes_per_param * 2 * vocab * hidden) / per_layer))
