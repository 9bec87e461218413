"""FLOP accounting (distrec.train.flops) against hand-computed numbers and a real model.

Small config used throughout: hidden 32, 2 layers, 4 heads (head_dim 8), 2 kv heads,
intermediate 64, vocab 100; a step of 2 rows × 8 tokens = 16 tokens.

Hand arithmetic (per layer): q 32·32 = 1024, k 32·16 = 512, v 512, o 1024, MLP 3·32·64 = 6144
-> 9216; 2 layers -> 18432; LM head 32·100 = 3200; dense = 21632.
Per step (16 tokens): body forward 2·18432·16 = 589824; head forward 2·3200·16 = 102400;
attention forward 2 layers · 2·2 · 32 · (8/2) · 16 = 16384 (causal half) -> forward 708608.
LoRA r=8 on q (32+32) and v (32+16): 8·(64+48)·2 layers = 1792 per token; forward
2·1792·16 = 57344, backward 4·1792·16 = 114688.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distrec.train.flops import (
    DENSE_BF16_PEAK,
    dense_params,
    device_peak,
    head_params,
    layer_params,
    measure_matmul_peak,
    mfu,
    train_step_flops,
)


def small_config(**over) -> LlamaConfig:
    kw = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "intermediate_size": 64, "vocab_size": 100}
    kw.update(over)
    return LlamaConfig(**kw)


LORA = {"adapter_rank": 8, "adapted_modules": ["q_proj", "v_proj"]}


def test_param_counts_by_hand():
    cfg = small_config()
    assert layer_params(cfg) == 9216
    assert head_params(cfg) == 3200
    assert dense_params(cfg) == 21632


@pytest.mark.parametrize("over", [{}, {"head_dim": 16}, {"num_key_value_heads": 4, "tie_word_embeddings": True}])
def test_dense_params_equal_linear_weights_of_a_real_llama(over):
    cfg = small_config(**over)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert dense_params(cfg) == linear


def test_forward_and_lora_step_by_hand():
    cfg = small_config()
    base = train_step_flops(cfg, tokens=16, seq_len=8)
    assert base.forward_flops == 708608
    # frozen base: backward = activation grads of the dense part (1×) + attention (2×)
    assert base.backward_flops == 589824 + 102400 + 2 * 16384
    assert base.model_flops == 1433600
    lora = train_step_flops(cfg, 16, 8, **LORA)
    assert lora.forward_flops == 708608 + 57344
    assert lora.backward_flops == 724992 + 114688
    assert lora.adapter_flops == 172032
    assert lora.model_flops == 1605632 == lora.hardware_flops


def test_full_finetune_is_three_forwards_and_more_than_lora():
    cfg = small_config()
    full = train_step_flops(cfg, 16, 8, full_finetune=True)
    assert full.model_flops == 3 * full.forward_flops == 3 * 708608
    lora = train_step_flops(cfg, 16, 8, **LORA)
    assert lora.model_flops < full.model_flops
    # the dense part alone: 6N per token (full) vs 4N (frozen base)
    n = dense_params(cfg)
    full_dense = full.model_flops - 3 * 16384
    assert full_dense == 6 * n * 16
    frozen_dense = train_step_flops(cfg, 16, 8).model_flops - 3 * 16384
    assert frozen_dense == 4 * n * 16


def test_logit_positions_and_full_context():
    cfg = small_config()
    one_per_row = train_step_flops(cfg, 16, 8, logit_positions=2)
    assert one_per_row.forward_flops == 589824 + 16384 + 2 * 3200 * 2  # 619008
    assert one_per_row.forward_flops == 619008
    lora = train_step_flops(cfg, 16, 8, logit_positions=2, **LORA)
    assert lora.model_flops == 1426432
    full_ctx = train_step_flops(cfg, 16, 8, causal_half=False)
    assert full_ctx.forward_flops == 589824 + 32768 + 102400  # 724992


def test_checkpointing_adds_one_forward_of_the_layers_to_hardware_only():
    cfg = small_config()
    plain = train_step_flops(cfg, 16, 8, **LORA)
    ckpt = train_step_flops(cfg, 16, 8, activation_checkpointing=True, **LORA)
    assert ckpt.model_flops == plain.model_flops
    # decoder layers re-run (body + attention + adapters), the LM head does not
    assert ckpt.recompute_flops == 589824 + 16384 + 57344 == 663552
    assert ckpt.hardware_flops - ckpt.model_flops == ckpt.forward_flops - 102400
    assert ckpt.hardware_flops == 2269184


def test_cft_doubles_when_both_branches_are_equal():
    cfg = small_config()
    for kw in ({}, LORA, {"full_finetune": True}):
        one = train_step_flops(cfg, 16, 8, **kw)
        two = train_step_flops(cfg, 16, 8, cft=True, cft_tokens=16, **kw)
        assert two.model_flops == 2 * one.model_flops
        assert train_step_flops(cfg, 16, 8, cft=True, **kw).model_flops == 2 * one.model_flops
    # a shorter counterfactual branch (history removed: 2 rows × 4 tokens) costs less
    short = train_step_flops(cfg, 16, 8, cft=True, cft_tokens=8, cft_seq_len=4, **LORA)
    cf_only = train_step_flops(cfg, 8, 4, **LORA)
    assert short.model_flops == train_step_flops(cfg, 16, 8, **LORA).model_flops + cf_only.model_flops
    with pytest.raises(ValueError):
        train_step_flops(cfg, 16, 8, cft_tokens=8)


def test_cflora_interaction_and_generator_by_hand():
    cfg = small_config()
    lora = train_step_flops(cfg, 16, 8, **LORA)
    cf = train_step_flops(cfg, 16, 8, cflora=True, **LORA)
    # 2·r² = 128 per token and adapted linear, 4 linears, 16 tokens, × 3 (fwd + bwd)
    assert cf.model_flops - lora.model_flops == 3 * 128 * 4 * 16 == 24576
    gen = train_step_flops(cfg, 16, 8, cflora=True, cflora_d_instance=16, **LORA)
    # generator per row and linear: 2·(16·128 + 128·64) = 20480; 2 rows, 4 linears, × 3
    assert gen.model_flops - cf.model_flops == 3 * 20480 * 4 * 2 == 491520


def test_unknown_adapted_module_is_refused():
    with pytest.raises(ValueError, match="unknown adapted modules"):
        train_step_flops(small_config(), 16, 8, adapter_rank=8, adapted_modules=["qkv"])


def test_llama_7b_parameter_count():
    cfg = LlamaConfig(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                      intermediate_size=11008, vocab_size=32000)
    # per layer 4·4096² + 3·4096·11008 = 202375168; ×32 = 6476005376; head 131072000
    assert dense_params(cfg) == 6607077376
    total = dense_params(cfg) + 32000 * 4096
    assert total == 6738149376
    assert abs(total - 6.74e9) / 6.74e9 < 1e-3  # LLaMA-7B's published size


def test_mfu_and_peaks():
    assert mfu(1e12, 2.0, 1e12) == 0.5
    assert mfu(3.0e15, 10.0, 989e12) == pytest.approx(3.0e14 / 989e12)
    assert DENSE_BF16_PEAK["H100 SXM"] == 989e12 and DENSE_BF16_PEAK["A100"] == 312e12
    assert device_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert device_peak("NVIDIA H100 PCIe") == 756e12
    assert device_peak("NVIDIA H200") == 989e12
    assert device_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert device_peak("Tesla T4") is None and device_peak(None) is None


def test_measure_matmul_peak_on_cpu():
    peak = measure_matmul_peak("cpu", torch.float32, n=128, repeats=3)
    assert peak > 0 and math.isfinite(peak)


def test_the_loops_counter_on_a_ctr_micro_batch_by_hand():
    """2 rows of 8 prompt tokens + the answer: 16 input tokens, 8 of context, 2 logit positions.
    forward  = 2·18432·16 (body) + 2·3200·2 (head at the answers) + 16384 (attention) + 57344 (LoRA)
    backward = 2·18432·16 + 2·3200·2 + 2·16384 (frozen base) + 114688 (LoRA)."""
    import numpy as np

    from distrec.config import load_job_config
    from distrec.train.flops import StepFlopCounter

    job = load_job_config(None, ["adapter.r=8", "adapter.target_modules=[q_proj, v_proj]", "data.task=ctr"])
    counter = StepFlopCounter(small_config(), job)
    mb = {"input_ids": [np.arange(9), np.arange(9)]}
    assert counter.micro_batch(mb) == (589824 + 12800 + 16384 + 57344) + (589824 + 12800 + 2 * 16384 + 114688)
    with pytest.raises(ValueError, match="unknown adapted modules"):
        StepFlopCounter(small_config(), load_job_config(None, ["adapter.target_modules=[c_attn]"]))
