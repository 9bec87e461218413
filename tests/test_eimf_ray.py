"""EIMF in the one training loop (real local Ray, DeepSpeed ZeRO stage 0 over gloo) and the
``eimf`` command line.

Truths used: the independent single-process trainer ``tests/eimf_oracle.py`` on the same
order, and data parallelism's gradient average (W ranks on G/W rows each = one rank on G rows
when every rank draws the same negatives and the ESIM losses are off).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from eimf_toy import toy_items, toy_samples
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from distrec.config import RayConfig
from distrec.errors import ConfigError, DataError
from distrec.cli import eimf_app
from distrec.config.eimf import (
    BackboneConfig,
    EimfConfig,
    EimfEvalConfig,
    EimfTrainConfig,
    EsimConfig,
    RecLossConfig,
)
from distrec.interests.evaluate import evaluate_retrieval
from distrec.model.interests.artefact import CONFIG, WEIGHTS, load_eimf
from eimf_oracle import train_eimf

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_thread")]

N_ITEMS, N_USERS, D_SEM = 48, 32, 8
LAM = 0.5
G = 32  # global batch; 32 users x 9 samples = 288 = 9 global batches, no tail


@pytest.fixture(scope="module")
def items() -> pa.Table:
    return toy_items(N_ITEMS)


@pytest.fixture(scope="module")
def samples() -> pa.Table:
    return toy_samples(N_USERS, N_ITEMS)


@pytest.fixture(scope="module")
def labels() -> pa.Table:
    """Semantic interests (3 random vectors) for every other user."""
    rng = np.random.default_rng(1)
    users = list(range(0, N_USERS, 2))
    return pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "interest_vectors": [[rng.normal(size=D_SEM).astype(np.float32).tolist() for _ in range(3)] for _ in users],
        }
    )


def cfg_of(lam: float = 0.0, epochs: int = 2, batch: int = G) -> EimfConfig:
    return EimfConfig(
        backbone=BackboneConfig(kind="sa", num_interests=4, dim=16, max_len=10),
        loss=RecLossConfig(sampler="log_uniform", num_negatives=24),
        esim=EsimConfig(lambda_pred=lam, lambda_align=lam),
        train=EimfTrainConfig(batch_size=batch, epochs=epochs, seed=7, device="cpu", log_every=1, lr=1e-2),
    )


def train_ray(samples, items, cfg, labels, *, workers: int, storage: Path, name: str, ray_storage: str | None = None,
              debug: dict | None = None, max_failures: int = 0, **train):
    """``(model, metrics, artefact folder)`` of one run of the loop on ``samples`` (all in the
    train split; valid and test are 16-row slices; inputs written under ``storage``, the run to
    ``ray_storage`` or ``storage``). ``metrics``: the run's ``train`` entry plus ``world_size``
    and ``history`` (per step: the logged loss parts)."""
    import dataclasses

    from distrec.data.storage import write_prepared
    from distrec.eval.tensorboard import read_scalars
    from distrec.config import DataConfig, JobConfig, ModelConfig
    from distrec.interests.pipeline import eimf_job
    from distrec.train.launcher import run_job

    prepared = storage / f"{name}-prepared"
    if not prepared.exists():
        write_prepared(prepared, {"train": samples, "valid": samples.slice(0, 16), "test": samples.slice(16, 16)},
                       items=items, users=pa.table({"user_id": pa.array(range(N_USERS), pa.int64())}),
                       meta={"dataset": "toy", "task": "generative"}, num_shards=1)
    labels_path = None
    if labels is not None:
        labels_path = storage / f"{name}-labels.parquet"
        import pyarrow.parquet as pq

        pq.write_table(labels, labels_path)
    ejob = JobConfig(data=DataConfig(task="generative"), model=ModelConfig(kind="eimf"), eimf=cfg,
                     ray=RayConfig(num_workers=workers, storage_path=ray_storage or str(storage), run_name=name,
                                   max_failures=max_failures))
    job = eimf_job(ejob, labels_path, "stage")
    job = dataclasses.replace(job, train=dataclasses.replace(job.train, **train),
                              debug=dataclasses.replace(job.debug, **(debug or {})))
    run = run_job(job, prepared=prepared)
    if ray_storage is not None:
        from distrec.storage_uri import local_copy, locate

        with local_copy(locate(str(run.run_dir)) / "eimf" / WEIGHTS) as weights:
            return load_file(str(weights)), run.metrics, str(run.run_dir)
    scalars = read_scalars(Path(run.run_dir) / "tensorboard")
    steps = [s for s, _ in scalars["train/loss"]]
    per_epoch = samples.num_rows // cfg.train.batch_size
    history = [{"step": st, "epoch": (st - 1) // per_epoch, **{k: dict(scalars[f"train/{k}"])[st] for k in ("loss", "loss_rec", "loss_pred", "loss_align",
                                                                              "n_typical")}} for st in steps]
    from distrec.model.interests.eimf import SemanticBank

    typical = SemanticBank(labels).typical(samples.column("user_id").to_numpy()).mean() if labels is not None else 0.0
    means = {k: float(np.mean([h[k] for h in history])) for k in ("loss", "loss_rec", "loss_pred", "loss_align")}
    metrics = {**run.metrics["train"], **means, "world_size": workers, "history": history, "typical_fraction": typical}
    return load_eimf(Path(run.run_dir) / "eimf")[0], metrics, Path(run.run_dir) / "eimf"


@pytest.fixture(scope="module")
def runs(ray_local, tmp_path_factory):
    """Each Ray run once per module: ``runs(name)`` -> (model, metrics, out_dir)."""
    storage = tmp_path_factory.mktemp("eimf-runs")
    cache: dict[str, tuple] = {}

    def get(name: str, samples, items, labels):
        if name not in cache:
            workers, lam, with_labels = {"w2": (2, 0.0, False), "w2_zero": (2, 0.0, True), "w1_esim": (1, LAM, True)}[name]
            cache[name] = train_ray(samples, items, cfg_of(lam), labels if with_labels else None, workers=workers,
                                    storage=storage, name=name)
        return cache[name]

    return get


def losses(metrics: dict, key: str = "loss") -> np.ndarray:
    return np.array([h[key] for h in metrics["history"]])


# ComiRec-SA's attention output bias adds a per-interest constant to every position before the
# softmax over positions, so its exact gradient is 0; its computed gradient is float noise,
# which Adam rescales to steps of size ~lr. Outputs never depend on it, so it is left out of
# weight comparisons across different (but equivalent) summation orders.
NO_GRADIENT = {"backbone.att_out.bias"}


def states_close(a: torch.nn.Module, b: torch.nn.Module, atol: float) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    keys = sa.keys() - NO_GRADIENT
    return sa.keys() == sb.keys() and all(torch.allclose(sa[k], sb[k], atol=atol, rtol=0) for k in keys)


def interests_of(model, samples, items) -> np.ndarray:
    from distrec.model.interests.backbones import ItemIndex
    from distrec.interests.evaluate import user_interests
    from distrec.model.interests.eimf import encode_samples

    data = encode_samples(samples, ItemIndex.from_items(items), model.backbone.cfg.max_len)
    return user_interests(model, data.hist, data.mask)


def test_one_worker_with_esim_equals_single_process(runs, samples, items, labels):
    """One rank sees whole batches, so even the in-batch ESIM losses match ``train_eimf``."""
    ref, ref_m = train_eimf(samples, items, cfg_of(LAM), labels)  # same permutations; 288 % 32 = 0: same batches
    one, one_m, _ = runs("w1_esim", samples, items, labels)
    assert ref_m["steps"] == one_m["steps"] == 18 and one_m["world_size"] == 1
    for key in ("loss", "loss_rec", "loss_pred", "loss_align"):
        np.testing.assert_allclose(losses(one_m, key), losses(ref_m, key), rtol=1e-5, atol=1e-6)
    assert losses(one_m, "n_typical").tolist() == losses(ref_m, "n_typical").tolist()
    assert one_m["loss_pred"] > 0 and one_m["loss_align"] > 0
    assert states_close(one, ref, atol=1e-4)
    np.testing.assert_allclose(interests_of(one, samples, items), interests_of(ref, samples, items), atol=1e-4)


def test_two_workers_equal_single_process_on_the_global_batch(runs, samples, items, labels):
    """2 ranks x 16 rows, gradient-averaged, = one process on the 32-row global batch (same negatives)."""
    ref, ref_m = train_eimf(samples, items, cfg_of())
    two, two_m, _ = runs("w2", samples, items, labels)
    assert two_m["steps"] == 18 and two_m["world_size"] == 2
    np.testing.assert_allclose(losses(two_m), losses(ref_m), rtol=1e-5, atol=1e-5)
    assert states_close(two, ref, atol=1e-4)
    np.testing.assert_allclose(interests_of(two, samples, items), interests_of(ref, samples, items), atol=1e-4)
    per_epoch = [np.mean([h["loss"] for h in two_m["history"] if h["epoch"] == e]) for e in (0, 1)]
    assert per_epoch[1] < per_epoch[0]  # and it learns


def test_killed_eimf_run_resumes_mid_epoch_to_the_identical_model(runs, samples, items, labels, tmp_path):
    """SIGKILL of the last rank after step 6 (checkpoints every 4 steps, epochs of 9): the
    restarted group resumes from step 4 (model, AdamW state, RNG and the negatives' stream) and
    ends bit for bit where the uninterrupted 2-rank run did, every sample once per epoch."""
    from distrec.eval.tensorboard import read_texts
    from distrec.train.faults import consumed

    base, _, _ = runs("w2", samples, items, labels)
    killed, metrics, out = train_ray(samples, items, cfg_of(), None, workers=2, storage=tmp_path, name="killed",
                                     debug={"kill_at_steps": [6], "record_samples": True}, max_failures=1,
                                     checkpoint_every=4)
    run_dir = out.parent
    assert (run_dir / "faults" / "killed_at_step_6").is_file()
    assert any("resumed at step 4" in t for t in read_texts(run_dir / "tensorboard")["events/resume"])
    a, b = base.state_dict(), killed.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    by_epoch, _ = consumed(run_dir)
    assert sorted(by_epoch) == [0, 1]
    for epoch, ids in by_epoch.items():
        assert len(ids) == len(set(ids)) == samples.num_rows, epoch


def test_zero_lambdas_reduce_to_backbone_under_ray(runs, samples, items, labels):
    base, base_m, _ = runs("w2", samples, items, labels)
    zero, zero_m, _ = runs("w2_zero", samples, items, labels)
    assert zero.heads is not None and zero_m["typical_fraction"] == pytest.approx(0.5)
    assert losses(zero_m).tolist() == losses(base_m).tolist()
    sb, sz = base.backbone.state_dict(), zero.backbone.state_dict()
    assert all(torch.equal(sb[k], sz[k]) for k in sb)


def test_serving_identical_without_esim_artefacts(runs, samples, items, labels, tmp_path):
    model, _, out = runs("w1_esim", samples, items, labels)
    ev = EimfEvalConfig(ks=[5, 20])
    full = evaluate_retrieval(model, samples, items, ev, return_topn=True)
    saved, index, _ = load_eimf(out)
    assert saved.heads is not None and np.array_equal(index.ids, np.arange(100, 100 + N_ITEMS))
    assert states_close(saved, model, atol=0.0)
    # the artefact with the ESIM heads deleted from the weights and the config: backbone only
    bare_dir = tmp_path / "bare"
    bare_dir.mkdir()
    save_file({k: v for k, v in load_file(str(out / WEIGHTS)).items() if not k.startswith("heads.")}, str(bare_dir / WEIGHTS))
    meta = json.loads((out / CONFIG).read_text())
    meta["semantic_dim"] = None
    (bare_dir / CONFIG).write_text(json.dumps(meta))
    bare, _, _ = load_eimf(bare_dir)
    assert bare.heads is None
    for other in (bare, load_eimf(out, heads=False)[0]):
        got = evaluate_retrieval(other, samples, items, ev, return_topn=True)
        assert np.array_equal(got["topn_item_ids"], full["topn_item_ids"])
        assert np.array_equal(got["topn_scores"], full["topn_scores"])


def test_batching_errors_name_the_key(samples, items, tmp_path, ray_local):
    with pytest.raises(ConfigError, match="eimf.train.batch_size=33 must be divisible by ray.num_workers=2"):
        train_ray(samples, items, cfg_of(batch=33), None, workers=2, storage=tmp_path, name="odd")
    with pytest.raises(DataError, match=r"train split has 10 rows, fewer than one optimiser step of 32"):
        train_ray(samples.slice(0, 10), items, cfg_of(), None, workers=2, storage=tmp_path, name="short")


# ----------------------------------------------------------------------------- command line


def test_cli_help_lists_commands():
    runner = CliRunner()
    res = runner.invoke(eimf_app, ["--help"])
    assert res.exit_code == 0 and "train" in res.output and "experiment" in res.output
    for cmd in ("train", "experiment"):
        res = runner.invoke(eimf_app, [cmd, "--help"])
        assert res.exit_code == 0 and "--config" in res.output


@pytest.mark.parametrize("cmd", ["train", "experiment"])
def test_cli_bad_key_names_it(cmd, tmp_path):
    runner = CliRunner()
    res = runner.invoke(eimf_app, [cmd, "--config", str(REPO / "jobs" / "eimf_ml100k.yaml"), "eimf.train.epoch=3"])
    assert res.exit_code == 2
    assert "eimf.train.epoch" in res.output and "did you mean 'eimf.train.epochs'" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("eimf:\n  selection:\n    n_cluster: 4\n")
    res = runner.invoke(eimf_app, [cmd, "--config", str(bad)])
    assert res.exit_code == 2 and "eimf.selection.n_cluster" in res.output


@pytest.mark.parametrize("path", ["eimf_ml100k.yaml", "eimf_gpu.yaml"])
def test_job_configs_load(path):
    from distrec.interests.pipeline import load_eimf_job

    job = load_eimf_job(REPO / "jobs" / path)
    assert job.data.task == "generative"
    assert job.eimf.selection.n_clusters * job.eimf.selection.per_cluster >= 1


# ----------------------------------------------------------------------------- whole pipeline


@pytest.fixture
def prepared(items, tmp_path):
    """A synthetic prepared generative folder (8 train, 1 valid, 2 test samples per user) and
    its DataConfig; ``prepare`` finds it complete and reuses it."""
    from distrec.config import DataConfig
    from distrec.data.prepare import config_key
    from distrec.data.storage import write_prepared

    rng = np.random.default_rng(0)
    splits: dict[str, list] = {"train": [], "valid": [], "test": []}
    sid = 0
    for u in range(N_USERS):
        seq = [100 + int(x) for x in rng.choice(np.arange(u % 4, N_ITEMS, 4), 12)]
        for j in range(1, len(seq)):
            split = "train" if j <= 8 else ("valid" if j == 9 else "test")
            splits[split].append({"sample_id": sid, "user_id": u, "item_id": seq[j], "timestamp": 1000 + j,
                                  "history_item_ids": seq[:j]})
            sid += 1
    data_cfg = DataConfig(task="generative", prepared_dir=str(tmp_path / "prepared"))
    write_prepared(tmp_path / "prepared", {k: pa.Table.from_pylist(v) for k, v in splits.items()}, items=items,
                   users=pa.table({"user_id": pa.array(range(N_USERS), pa.int64())}),
                   meta={"config_key": config_key(data_cfg)}, num_shards=1)
    return data_cfg


def _printed_json(stdout: str) -> dict:
    """The JSON object a CLI command prints last (its opening brace alone on a line; nested
    objects such as the metrics' ``ci`` open on a ``"key": {`` line)."""
    text = "\n" + stdout
    return json.loads(text[text.rindex("\n{\n") + 1:])


def test_cli_train_then_label_then_train_with_the_labels(ray_local, prepared, tmp_path):
    """The staged workflow: ``eimf train`` -> ``eimf label --model out/ibim`` (k-means + the
    tiny random Llama in 1 Ray Data actor + MiniLM) -> ``eimf train --labels``."""
    import pyarrow.parquet as pq
    import yaml

    from distrec.data.storage import open_split, open_table
    from distrec.config.eimf import SelectionConfig
    from distrec.interests.typical_users import select_from_model

    job = {"data": {"task": "generative", "prepared_dir": prepared.prepared_dir},
           "ray": {"num_workers": 2, "storage_path": str(tmp_path / "runs")},
           "eimf": {"backbone": {"dim": 16, "max_len": 10}, "loss": {"sampler": "full"},
                    "train": {"batch_size": 32, "epochs": 1}, "eval": {"ks": [5, 20]},
                    "selection": {"n_clusters": 2, "per_cluster": 3},
                    "label": {"model": "tiny", "num_actors": 1, "max_new_tokens": 8, "keep_dropped": True},
                    "out_dir": str(tmp_path / "out")}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(eimf_app, ["train", "--config", str(tmp_path / "job.yaml"), "eimf.train.epochs=2"])
    assert res.exit_code == 0, res.output
    shown = _printed_json(res.stdout)
    assert shown["steps"] == 2 * (N_USERS * 8 // 32) and shown["n"] == 2 * N_USERS
    model, _, cfg = load_eimf(tmp_path / "out" / "ibim")
    assert cfg.train.epochs == 2 and model.heads is None
    test = open_split(Path(prepared.prepared_dir), "test")
    again = evaluate_retrieval(model, test, open_table(Path(prepared.prepared_dir), "items"), EimfEvalConfig(ks=[5, 20]))
    assert again["recall@20"] == pytest.approx(shown["recall@20"]) and again["n"] == test.num_rows

    res = CliRunner().invoke(eimf_app, ["label", "--config", str(tmp_path / "job.yaml"), "--model", str(tmp_path / "out" / "ibim")])
    assert res.exit_code == 0, res.output
    info = _printed_json(res.stdout)
    train = open_split(Path(prepared.prepared_dir), "train")
    expected = select_from_model(model, train, open_table(Path(prepared.prepared_dir), "items"),
                                 SelectionConfig(n_clusters=2, per_cluster=3))
    chosen = pq.read_table(tmp_path / "out" / "typical_users.parquet")
    assert chosen.equals(expected.to_table()) and info["selected_users"] == 6
    labels = pq.read_table(info["labels"])
    assert labels.num_rows == 6 and set(labels.column("model").to_pylist()) == {"tiny"}  # keep_dropped: every user
    assert info["llm_calls"] == 6 + info["retried"] and info["parsed"] + info["dropped"] == 6
    assert json.loads((tmp_path / "out" / "labelling.json").read_text())["llm_calls"] == info["llm_calls"]

    res = CliRunner().invoke(eimf_app, ["train", "--config", str(tmp_path / "job.yaml"), "--labels", info["labels"]])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "eimf" / "report.json").is_file()


def test_cli_label_names_a_missing_model(prepared, tmp_path):
    import yaml

    job = {"data": {"task": "generative", "prepared_dir": prepared.prepared_dir}, "eimf": {"out_dir": str(tmp_path / "out")}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    res = CliRunner().invoke(eimf_app, ["label", "--config", str(tmp_path / "job.yaml"), "--model", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "nope: not an EIMF artefact" in res.output
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_experiment_end_to_end(ray_local, prepared, tmp_path):
    """prepare (a synthetic prepared folder) -> IBIM -> k-means -> LLM stage (a fake LLM that
    names the genres in the prompt) -> IBIM + ESIM on 2 ranks -> table."""
    from distrec.config import JobConfig, ModelConfig
    from distrec.interests.pipeline import run_experiment

    def fake_llm(prompts, *, sample, seed):
        return ["\n".join(f"Interest: {g} films | Reason: many" for g in ("Action", "Drama", "Comedy", "Horror") if g in p)
                for p in prompts]

    def hashing_encoder(phrases):
        return np.stack([np.random.default_rng(abs(hash(p)) % 2**32).normal(size=D_SEM) for p in phrases]).astype(np.float32)

    cfg = cfg_of(LAM)
    cfg.selection.n_clusters, cfg.selection.per_cluster = 2, 4
    cfg.label.num_actors, cfg.label.actor_cpus = 1, 0.5
    cfg.out_dir = str(tmp_path / "out")
    job = JobConfig(data=prepared, model=ModelConfig(kind="eimf"), eimf=cfg,
                    ray=RayConfig(num_workers=2, storage_path=str(tmp_path / "runs")))
    res = run_experiment(job, generate_fn=fake_llm, encoder=hashing_encoder)
    lab = res["labelling"]
    assert lab["selected_users"] == lab["labelled_users"] == lab["llm_calls"] == 8 and lab["dropped"] == 0
    assert res["eimf"]["train"]["loss_pred"] > 0 and res["eimf"]["train"]["world_size"] == 2
    assert res["ibim"]["train"]["steps"] == res["eimf"]["train"]["steps"] == 2 * (N_USERS * 8 // G)
    assert 0 < lab["typical_train_fraction"] < 1
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| IBIM (ComiRec-SA) alone |" in md and "| EIMF (IBIM + ESIM) |" in md and "8 generations" in md
    for stage in ("ibim", "eimf"):
        assert load_eimf(tmp_path / "out" / stage)[0].backbone is not None


def test_golden_per_step_losses_of_the_eimf_toy_run(runs, samples, items, labels):
    """2 workers, 2 epochs of 9 global batches, fp32 (tests/golden.py)."""
    from golden import check

    _, metrics, _ = runs("w2", samples, items, labels)
    check("eimf_toy_w2", losses(metrics))
