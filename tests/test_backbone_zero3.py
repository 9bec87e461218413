"""The real SmolLM2-135M (converted once from its GGUF) loads under ZeRO-3 partitioned init
with 2 gloo ranks: every rank holds about half of each parameter, and the gathered weights
equal the safetensors checkpoint bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.multiprocessing as mp
from fixtures_data import shared_home
from fixtures_gloo import free_port, gloo_rank


def _load_and_compare(rank: int, world: int, port: int, out: str) -> None:
    with gloo_rank(rank, world, port):
        _compare_with_checkpoint(rank, out)


def _compare_with_checkpoint(rank: int, out: str) -> None:
    from safetensors import safe_open

    from distrec.config import load_job_config
    from distrec.model.backbone import build_model, resolve_model_dir
    from distrec.train.strategy import DeepSpeedStrategy

    job = load_job_config(None, ["model.name_or_path=smollm2-135m"])
    folder = resolve_model_dir(job.model)
    strategy = DeepSpeedStrategy(job.deepspeed, job.train, use_gpu=False)
    with strategy.model_init_context():
        model = build_model(job.model)
    params = dict(model.named_parameters())
    shares = {n: strategy.local_numel(p) for n, p in params.items()}
    checked = []
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        for name in ("model.embed_tokens.weight", "model.layers.7.self_attn.q_proj.weight", "model.norm.weight"):
            with strategy.gathered([params[name]]):
                checked.append((name, bool(torch.equal(params[name].detach(), f.get_tensor(name)))))
    Path(out, f"rank{rank}.json").write_text(json.dumps({"shares": shares, "checked": checked}))


def test_smollm2_loads_partitioned_and_equal_to_its_checkpoint(tmp_path):
    from distrec.config import ModelConfig
    from distrec.model.backbone import resolve_model_dir

    shared_home()
    folder = resolve_model_dir(ModelConfig(name_or_path="smollm2-135m"))  # fetch + convert once
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    mp.spawn(_load_and_compare, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for r in ranks:
        assert r["checked"] and all(ok for _, ok in r["checked"]), r["checked"]
    total_full = sum(full for _, full in ranks[0]["shares"].values())
    assert 134_000_000 < total_full < 135_000_000  # 134.5M parameters (tied head counted once)
    for name, (_, full) in ranks[0]["shares"].items():
        held = [r["shares"][name][0] for r in ranks]
        assert all(h <= -(-full // 2) for h in held) and sum(held) >= full, (name, held, full)


def _random_init(rank: int, world: int, port: int, out: str, spec: str) -> None:
    with gloo_rank(rank, world, port):
        _build_random(rank, out, spec)


def _build_random(rank: int, out: str, spec: str) -> None:
    from distrec.config import load_job_config
    from distrec.model.backbone import build_model
    from distrec.train.strategy import DeepSpeedStrategy

    job = load_job_config(None, ["model.name_or_path=tiny", "model.init=random", f"model.tiny={spec}"])
    strategy = DeepSpeedStrategy(job.deepspeed, job.train, use_gpu=False)
    torch.manual_seed(1234)
    with strategy.model_init_context():
        model = build_model(job.model)
    params = dict(model.named_parameters())
    shares = {n: strategy.local_numel(p) for n, p in params.items()}
    name = "model.layers.1.mlp.up_proj.weight"
    with strategy.gathered([params[name]]):
        whole = params[name].detach().clone()
    torch.save({"shares": shares, "whole": whole, "config": model.config.to_dict()}, Path(out, f"rank{rank}.pt"))


def test_random_init_builds_any_size_partitioned_without_writing_weights(tmp_path):
    """``model.init: random`` with a ``tiny`` spec: built under ZeRO-3 init on 2 ranks (each
    holds about half of every parameter), the same weights on both ranks, and no model folder
    written for it (only SmolLM2's tokenizer folder is used)."""
    from distrec.paths import models_dir

    shared_home()
    spec = "{hidden_size: 96, intermediate_size: 256, num_hidden_layers: 3, num_attention_heads: 4, num_key_value_heads: 4}"
    before = {p.name for p in models_dir().iterdir()}
    mp.spawn(_random_init, args=(2, free_port(), str(tmp_path), spec), nprocs=2, join=True)
    assert {p.name for p in models_dir().iterdir()} == before
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert ranks[0]["config"]["hidden_size"] == 96 and ranks[0]["config"]["num_hidden_layers"] == 3
    assert ranks[0]["whole"].shape == (256, 96) and torch.equal(ranks[0]["whole"], ranks[1]["whole"])
    assert ranks[0]["whole"].std() > 0
    for name, (_, full) in ranks[0]["shares"].items():
        held = [r["shares"][name][0] for r in ranks]
        assert all(h <= -(-full // 2) for h in held) and sum(held) >= full, (name, held, full)
