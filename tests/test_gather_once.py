"""ZeRO-3 with gradient accumulation gathers each parameter once per optimiser step
(``DeepSpeedStrategy.accumulation_window``) and a frozen one once per run
(``deepspeed.replicate_frozen``), on 2 gloo ranks, and changes no number; with
``deepspeed.prune_idle_hooks`` (the default) ZeRO-3's module hooks stay only where a partitioned
parameter is fetched, with the numbers equal up to float rounding; the bitwise comparisons turn it
off on both sides.

The all-gathered bytes are read from DeepSpeed's own communication logger (``comms_logger``),
and the reference is the same run with ``deepspeed.gather_once_per_step=false``: every
micro-batch gathers the same parameters, so the window must divide the bytes by ``grad_accum``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from fixtures_gloo import free_port, gloo_rank

GRAD_ACCUM, STEPS = 3, 3
# the comms logger counts a rank's input to all_gather_into_tensor: its half of the 100 x 128 fp32 embedding
EMBEDDING_SHARD_BYTES = 100 * 128 * 4 // 2


def _run(rank: int, world: int, port: int, overrides: list[str], out: str) -> None:
    with gloo_rank(rank, world, port):
        _train(rank, overrides, out)


def _train(rank: int, overrides: list[str], out: str) -> None:
    import deepspeed.comm as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from distrec.config import load_job_config
    from distrec.train.strategy import DeepSpeedStrategy

    # no persistent parameters: DeepSpeed re-gathers those after every optimiser step in both modes
    extra = {"comms_logger": {"enabled": True, "prof_all": True},
             "zero_optimization": {"stage3_param_persistence_threshold": 0}}
    job = load_job_config(None, ["train.micro_batch_size=2", f"train.grad_accum={GRAD_ACCUM}",
                                 f"deepspeed.extra={json.dumps(extra)}", *overrides])
    strategy = DeepSpeedStrategy(job.deepspeed, job.train, use_gpu=False)
    with strategy.model_init_context():
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=128, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=4, intermediate_size=256))
    model.model.embed_tokens.weight.requires_grad_(False)  # a frozen part, as under LoRA
    engine = strategy.initialize(model, total_steps=10)
    tokens = torch.Generator().manual_seed(rank)
    losses, gathered = [], []
    for _ in range(STEPS):
        before = _gathered_bytes(dist)
        with strategy.accumulation_window():
            for _ in range(GRAD_ACCUM):
                x = torch.randint(0, 100, (2, 12), generator=tokens)
                loss = engine(input_ids=x, labels=x).loss
                strategy.backward(loss)
                strategy.step()
                losses.append(loss.item())
        gathered.append(_gathered_bytes(dist) - before)
    params = dict(engine.module.named_parameters())
    with strategy.gathered(params.values()):
        final = {n: p.detach().clone() for n, p in params.items() if p.requires_grad}
    torch.save({"losses": losses, "gathered": gathered, "final": final, "replicated": strategy.replicated,
                "hooked": strategy.hooked, "hooks": _zero3_hooks(engine.module),
                "parameters": [n for n, _ in engine.module.named_parameters()],
                "state_dict": list(engine.module.state_dict())}, Path(out) / f"rank{rank}.pt")


def _zero3_hooks(model: torch.nn.Module) -> dict[str, int]:
    """Per module, how many forward hooks defined in DeepSpeed (``deepspeed.*``) it carries."""
    counts = {}
    for name, module in model.named_modules():
        hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]
        counts[name] = sum(getattr(h, "__module__", "").startswith("deepspeed.") for h in hooks)
    return counts


def _gathered_bytes(dist) -> int:
    """Bytes sent by ZeRO-3's parameter all-gathers (``all_gather_into_tensor``) so far."""
    sizes = dist.comms_logger.get_raw_data().get("all_gather_into_tensor", {})
    return sum(size * entry[0] for size, entry in sizes.items())


def _spawn(tmp_path: Path, name: str, overrides: list[str]) -> dict:
    out = tmp_path / name
    out.mkdir()
    mp.spawn(_run, args=(2, free_port(), overrides, str(out)), nprocs=2)
    return torch.load(out / "rank0.pt")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gather_once")
    every_hook = "deepspeed.prune_idle_hooks=false"  # the bitwise comparisons: the same hooks on both sides
    return {
        "once": _spawn(tmp, "once", [every_hook]),
        "every": _spawn(tmp, "every", ["deepspeed.gather_once_per_step=false", every_hook]),
        "frozen_partitioned": _spawn(tmp, "frozen_partitioned", ["deepspeed.replicate_frozen=false"]),
        "pruned": _spawn(tmp, "pruned", []),  # the default
        # a live-parameter budget below the model's 0.52M elements turns the window off
        "over_budget": _spawn(tmp, "over_budget", ['deepspeed.extra.zero_optimization={"stage3_max_live_parameters": 50000, '
                                                   '"stage3_param_persistence_threshold": 0}']),
    }


def test_one_step_gathers_the_model_once_instead_of_once_per_micro_batch(runs):
    # from the second step on: the first one also gathers at start-up
    once, every = runs["once"]["gathered"][1:], runs["every"]["gathered"][1:]
    assert all(b > 0 for b in every)
    assert [b * GRAD_ACCUM for b in once] == every


def _assert_bitwise_equal_training(a: dict, b: dict) -> None:
    assert a["losses"] == b["losses"]
    assert a["final"].keys() == b["final"].keys()
    for name, value in b["final"].items():
        assert torch.equal(a["final"][name], value), name


def test_losses_and_trained_weights_are_unchanged(runs):
    _assert_bitwise_equal_training(runs["once"], runs["every"])


def test_a_model_larger_than_the_live_parameter_budget_gathers_per_micro_batch(runs):
    # ... the frozen embedding included: "every" keeps it whole (replicate_frozen), over budget it is not
    assert runs["over_budget"]["replicated"] == []
    extra = [o - e for o, e in zip(runs["over_budget"]["gathered"], runs["every"]["gathered"])]
    assert extra == [GRAD_ACCUM * EMBEDDING_SHARD_BYTES] * STEPS
    assert runs["over_budget"]["losses"] == runs["every"]["losses"]


def test_a_frozen_parameter_is_kept_whole_and_never_gathered_again(runs):
    once, partitioned = runs["once"], runs["frozen_partitioned"]
    assert once["replicated"] == ["model.embed_tokens.weight"] and partitioned["replicated"] == []
    assert "model.embed_tokens.weight" not in once["parameters"] + once["state_dict"]
    # partitioned, the frozen embedding is gathered once in every step
    assert [p - o for p, o in zip(partitioned["gathered"], once["gathered"])] == [EMBEDDING_SHARD_BYTES] * STEPS


def test_replicating_the_frozen_parameters_changes_no_number(runs):
    _assert_bitwise_equal_training(runs["once"], runs["frozen_partitioned"])


def test_pruned_only_modules_owning_a_partitioned_parameter_keep_zero3_hooks(runs):
    trained = {"lm_head", *(f"model.layers.{i}.{part}" for i in range(3) for part in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")),
        "model.norm"}  # every module with a weight of its own, the frozen embedding replicated
    assert set(runs["pruned"]["hooked"]) == {""} | trained
    assert {n for n, k in runs["pruned"]["hooks"].items() if k} == {""} | trained
    everywhere = runs["once"]["hooks"]  # without pruning every module keeps its hooks
    assert runs["once"]["hooked"] == [] and all(everywhere.values())
    partitioned = runs["frozen_partitioned"]  # nothing replicated: nothing pruned, even by default
    assert partitioned["hooked"] == [] and partitioned["hooks"] == everywhere
    assert len(everywhere) > len(trained) + 2  # decoder layers, attention, MLP blocks, activations, rotary


def test_pruning_idle_hooks_keeps_the_numbers_up_to_rounding_and_the_gathers(runs):
    pruned, once = runs["pruned"], runs["once"]
    torch.testing.assert_close(pruned["losses"], once["losses"])
    assert pruned["final"].keys() == once["final"].keys()
    for name, value in once["final"].items():
        torch.testing.assert_close(pruned["final"][name], value)
    assert pruned["gathered"] == once["gathered"]
