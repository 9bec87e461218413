"""Small random models built in memory for unit tests (no files, no downloads)."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, vocab_size: int = 100, num_hidden_layers: int = 2) -> LlamaForCausalLM:
    """A seeded 2-layer Llama of width 32 in eval mode."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_hidden_layers,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
    return LlamaForCausalLM(cfg).eval()
