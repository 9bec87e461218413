"""Shared artefacts are published whole and built once when several processes need them at once.

The end-to-end case is the one a newcomer hit: ranks of an initialised gloo group find no
model folder in an empty ``$DISTREC_HOME`` and all build it. transformers' ``save_pretrained``
writes weights only on rank 0 inside a process group, so a folder published by another rank
lacked them. Rank 0 arrives last here, so the other ranks always race to publish first.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from fixtures_data import smollm2_gguf
from fixtures_gloo import free_port, gloo_rank

WORLD = 3


def _rank_builds_tiny(rank: int, world: int, port: int, home: str, out: str) -> None:
    with gloo_rank(rank, world, port, DISTREC_HOME=home):
        _build_and_digest(rank, out)


def _build_and_digest(rank: int, out: str) -> None:
    from transformers import AutoModelForCausalLM

    from distrec.config import ModelConfig
    from distrec.model.backbone import resolve_model_dir

    if rank == 0:
        time.sleep(3.0)  # rank 0 (the only one save_pretrained writes weights on) comes last
    folder = resolve_model_dir(ModelConfig(name_or_path="tiny"))
    smollm2 = resolve_model_dir(ModelConfig(name_or_path="smollm2-135m"))
    model = AutoModelForCausalLM.from_pretrained(folder)
    digest = {n: float(p.double().sum()) for n, p in model.named_parameters()}
    Path(out, f"rank{rank}.json").write_text(json.dumps({"tiny": str(folder), "smollm2": str(smollm2),
                                                         "sums": digest}))


def test_ranks_of_a_gloo_group_build_one_complete_model_folder(tmp_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from distrec.model.backbone import TINY_DEFAULTS

    gguf = smollm2_gguf()  # the shared test home's copy; the fresh home links to it (no download)
    home = tmp_path / "home"
    (home / "raw" / "smollm2").mkdir(parents=True)
    (home / "raw" / "smollm2" / gguf.name).symlink_to(gguf)
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_rank_builds_tiny, args=(WORLD, free_port(), str(home), str(out)), nprocs=WORLD, join=True)

    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    models = sorted(p.name for p in (home / "models").iterdir() if not p.name.startswith("."))
    assert len(models) == 2, models  # the converted SmolLM2 and the tiny model, nothing else
    for key in ("tiny", "smollm2"):
        folders = {r[key] for r in ranks}
        assert len(folders) == 1
        folder = Path(folders.pop())
        assert all((folder / f).stat().st_size > 0 for f in ("config.json", "model.safetensors", "tokenizer.json"))
    assert not [p for p in (home / "models").iterdir() if ".tmp-" in p.name or ".old-" in p.name]

    tokenizer = AutoTokenizer.from_pretrained(ranks[0]["smollm2"])
    with torch.random.fork_rng():  # the reference: the same seeded architecture built here
        torch.manual_seed(0)
        ref = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, **TINY_DEFAULTS))
    want = {n: float(p.double().sum()) for n, p in ref.named_parameters()}
    for r in ranks:
        assert r["sums"] == pytest.approx(want, rel=1e-12)


def _build_counting(target: str, log: str, start: float) -> None:
    from distrec import atomic

    while time.time() < start:
        time.sleep(0.01)

    def build(tmp: Path) -> None:
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        (tmp / "data.bin").write_bytes(b"x" * 1000)

    atomic.ensure_folder(Path(target), build, ("data.bin",), "test folder")


def test_ensure_folder_builds_once_for_many_processes(tmp_path):

    target, log = tmp_path / "shared", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("spawn")
    start = time.time() + 2.0
    procs = [ctx.Process(target=_build_counting, args=(str(target), str(log), start)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(log.read_text().split()) == 1  # one builder, three waited and reused
    assert (target / "data.bin").read_bytes() == b"x" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shared.lock", "builds.log", "shared"]


def test_an_incomplete_folder_is_rebuilt_and_a_reader_names_it(tmp_path, caplog):
    from distrec import atomic

    target = tmp_path / "model"
    target.mkdir()
    (target / "tokenizer.json").write_text("{}")  # what a rank without weights used to publish
    with pytest.raises(atomic.IncompleteError, match=r"model .* lacks \['config.json', 'model\*.safetensors'\]"):
        atomic.require_complete(target, ("config.json", "model*.safetensors"), "model folder")
    with caplog.at_level("WARNING"):
        atomic.ensure_folder(target, lambda tmp: [(tmp / f).write_text("1") for f in ("config.json", "model.safetensors")],
                             ("config.json", "model*.safetensors"), "model folder")
    assert "lacks ['config.json', 'model*.safetensors']; rebuilding" in caplog.text
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]


def test_a_staged_folder_missing_a_required_file_is_never_published(tmp_path):
    from distrec import atomic

    target = tmp_path / "out"
    with pytest.raises(atomic.IncompleteError, match="lacks"):
        with atomic.staged(target, ("manifest.json",)) as tmp:
            (tmp / "part-0.parquet").write_text("x")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_file_write_keeps_the_old_file(tmp_path):
    from distrec import atomic

    path = tmp_path / "metrics.json"
    atomic.write_json(path, {"auc": 0.5})

    def half(tmp: Path) -> None:
        tmp.write_text('{"auc": 0.')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.write_file(path, half)
    assert json.loads(path.read_text()) == {"auc": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_converting_the_model_leaves_the_callers_random_state_alone(tmp_path, monkeypatch):
    """A worker that converts SmolLM2 (empty node-local home) must draw its adapter's init from
    the same RNG state as one that finds the folder built (the node-local run's divergence)."""
    import torch

    from distrec.config import ModelConfig
    from distrec.model.backbone import resolve_model_dir

    monkeypatch.setenv("DISTREC_HOME", str(tmp_path / "home"))
    from fixtures_data import smollm2_gguf

    gguf = smollm2_gguf()
    raw = tmp_path / "home" / "raw" / "smollm2"
    raw.mkdir(parents=True, exist_ok=True)
    if not (raw / gguf.name).exists():
        (raw / gguf.name).symlink_to(gguf)
    assert not (tmp_path / "home" / "models").exists()
    torch.manual_seed(42)
    expected = torch.rand(4)
    torch.manual_seed(42)
    resolve_model_dir(ModelConfig(name_or_path="smollm2-135m"))  # converts: the folder is new
    assert torch.equal(torch.rand(4), expected)
