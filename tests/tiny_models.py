"""Small random models built in memory for unit tests (no files, no downloads)."""

from __future__ import annotations

import types

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(seed: int = 0, vocab_size: int = 100, num_hidden_layers: int = 2) -> LlamaForCausalLM:
    """A seeded 2-layer Llama of width 32 in eval mode."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_hidden_layers,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64)
    return LlamaForCausalLM(cfg).eval()


def cflora_adapter(d_instance: int = 256, **fields):
    """A CFLoRA adapter from ``adapter`` fields (r, alpha, dropout, target_modules) and
    ``adapter.cflora`` options (mode, g_init, freeze_ab, lora_init_dir) given together."""
    from distrec.config import AdapterConfig, CFLoraOptions
    from distrec.model.adapters.cflora import CFLoraAdapter

    option_names = {"mode", "g_init", "freeze_ab", "lora_init_dir"}
    options = CFLoraOptions(**{k: v for k, v in fields.items() if k in option_names})
    cfg = AdapterConfig(kind="cflora", cflora=options, **{k: v for k, v in fields.items() if k not in option_names})
    return CFLoraAdapter(cfg, d_instance)


def float64_llama():
    """A seeded 2-layer Llama of width 32 in float64 (vocabulary 40, pad id 0), SDPA attention."""
    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, pad_token_id=0, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).double()


def norms_in_float64(model):
    """Hugging Face's ``LlamaRMSNorm`` computes in float32 whatever the model's dtype, so its
    backward rounds the upstream gradient to float32: a prefix token shared by both branches
    gets ``round32(g_f + g_cf)`` where separate rows get ``round32(g_f) + round32(g_cf)``. The
    same formula in the input's dtype removes that rounding and leaves the layout's own error."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)

    for module in model.modules():
        if isinstance(module, LlamaRMSNorm):
            module.forward = types.MethodType(forward, module)
    return model
