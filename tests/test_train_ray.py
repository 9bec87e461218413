"""The engine end to end with the real components: Ray Train launches 2 DeepSpeed ZeRO-3
workers (gloo, CPU) that fine-tune LoRA on a tiny Llama over real MovieLens-100K samples.

One baseline run feeds several checks (partitioning, loss, TensorBoard, adapter export,
predictions); resume and gradient-accumulation equivalence compare further runs against it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from distrec.config import load_job_config
from distrec.train.launcher import run_job
from distrec.eval.tensorboard import read_scalars

pytestmark = pytest.mark.ray
REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "jobs" / "tiny.yaml"
# 64 train rows, 2 ranks x micro 4 x accum 2 = 16 rows a step: 4 steps an epoch, 3 epochs.
# Validation only at the end, so the exported adapter is the final state in every run compared.
BASE = ["train.epochs=3", "train.max_steps=12", "train.checkpoint_every=3", "train.eval_every=100"]


def tiny_job(storage: Path, name: str, *extra: str):
    return load_job_config(TINY, [f"ray.storage_path={storage}", f"ray.run_name={name}", *BASE, *extra])


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def baseline(ray_local, storage):
    return run_job(tiny_job(storage, "baseline"))


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _partition_reports(run_dir: Path) -> list[dict]:
    reports = [json.loads(p.read_text()) for p in sorted((run_dir / "diagnostics").glob("partition_rank*.json"))]
    assert [r["rank"] for r in reports] == [0, 1]
    return reports


def test_every_rank_holds_the_frozen_base_whole_by_default(baseline):
    reports = _partition_reports(baseline.run_dir)
    names = reports[0]["params"].keys()
    replicated = reports[0]["replicated"]  # deepspeed.replicate_frozen
    assert reports[1]["replicated"] == replicated
    trained = [n for n in names if "lora_" in n]
    assert trained and set(replicated) == set(names) - set(trained)
    for name in replicated:
        assert all(r["params"][name][0] == r["params"][name][1] for r in reports), name
    # deepspeed.prune_idle_hooks: ZeRO-3's hooks stay on the root and on the modules owning the adapters
    owners = {n.rsplit(".", 1)[0] for n in trained}
    assert all(set(r["hooked"]) == {""} | owners for r in reports), reports[0]["hooked"]


def test_with_the_base_partitioned_each_rank_holds_half_and_the_losses_are_equal(storage, baseline):
    partitioned = run_job(tiny_job(storage, "partitioned", "deepspeed.replicate_frozen=false"))
    reports = _partition_reports(partitioned.run_dir)
    assert reports[0]["replicated"] == []
    names = reports[0]["params"].keys()
    big = [n for n in names if reports[0]["params"][n][1] >= 1000]
    assert big, "no sizeable parameters recorded"
    for name in big:
        full = reports[0]["params"][name][1]
        locals_ = [r["params"][name][0] for r in reports]
        assert all(n <= -(-full // 2) for n in locals_), (name, locals_, full)
        assert sum(locals_) >= full, (name, locals_, full)  # together they hold it all
    assert reports[0]["hooked"] == []  # nothing replicated, so ZeRO-3's hooks stay on every module
    # The default run keeps hooks only on the adapters (deepspeed.prune_idle_hooks), so the backward
    # may add gradients in another order: equal up to float rounding. Replication alone is bitwise
    # (tests/test_gather_once.py, the same hooks on both sides).
    loss = read_scalars(partitioned.run_dir / "tensorboard")["train/loss"]
    want = read_scalars(baseline.run_dir / "tensorboard")["train/loss"]
    assert [s for s, _ in loss] == [s for s, _ in want]
    np.testing.assert_allclose([v for _, v in loss], [v for _, v in want], rtol=1e-5, atol=0)
    assert_same_adapter(partitioned, baseline, atol=1e-6, rtol=1e-5)


def test_loss_decreases_and_tensorboard_events_read_back(baseline):
    from distrec.eval.tensorboard import read_texts

    scalars = read_scalars(baseline.run_dir / "tensorboard")
    loss = [v for _, v in scalars["train/loss"]]
    assert [s for s, _ in scalars["train/loss"]] == list(range(1, 13))
    assert np.mean(loss[-3:]) < 0.5 * np.mean(loss[:3]), loss
    for tag in ("train/lr", "train/grad_norm", "throughput/tokens_per_s", "throughput/samples_per_s", "eval/valid_auc"):
        assert tag in scalars, sorted(scalars)
    texts = read_texts(baseline.run_dir / "tensorboard")
    assert any("Answer with only Yes or No" in t for t in texts["samples/prompt"])


def test_adapter_export_is_non_empty_and_reloads_equal(baseline):
    from peft import PeftModel

    from distrec.model.backbone import build_model

    saved = adapter_tensors(baseline.run_dir)
    assert len(saved) == 2 * 7 * 2  # 2 layers x 7 projections x (A, B)
    assert all(t.numel() > 0 for t in saved.values())
    assert any(k.endswith("lora_B.weight") and t.abs().sum() > 0 for k, t in saved.items()), "B never trained"
    job = load_job_config(TINY)
    base = build_model(job.model)
    reloaded = PeftModel.from_pretrained(base, str(baseline.run_dir / "adapter"))
    params = {n.replace(".default.", "."): p for n, p in reloaded.named_parameters() if "lora_" in n}
    assert set(params) == set(saved)
    for name, tensor in saved.items():
        torch.testing.assert_close(params[name].detach(), tensor, rtol=0, atol=0)


def test_predictions_cover_the_test_split_and_metrics_match_sklearn(baseline):
    from sklearn.metrics import log_loss, roc_auc_score

    preds = pq.read_table(baseline.run_dir / "predictions_test.parquet").to_pandas()
    assert len(preds) == 32 and preds.sample_id.is_unique
    for split in ("test", "valid"):
        preds = pq.read_table(baseline.run_dir / f"predictions_{split}.parquet").to_pandas()
        metrics = baseline.metrics[split]
        assert len(preds) == metrics["n"] and preds.sample_id.is_unique
        assert metrics["auc"] == pytest.approx(roc_auc_score(preds.label, preds.p_yes), abs=1e-6)
        assert metrics["logloss"] == pytest.approx(log_loss(preds.label, preds.p_yes.clip(1e-7, 1 - 1e-7),
                                                            labels=[0, 1]), abs=1e-5)
    assert (baseline.run_dir / "report.md").is_file()


def test_eval_of_the_saved_run_reproduces_its_test_metrics(baseline):
    """`distrec eval --run DIR`: a fresh worker group loads the exported adapter. (The training run
    validated its final state once, at step 12, and took its final valid metrics from those
    predictions: no second forward over the valid rows.)"""
    from distrec.config import load_job_config as load

    forwards = read_scalars(baseline.run_dir / "tensorboard")["throughput/eval_valid_rows_per_s"]
    assert [step for step, _ in forwards] == [12]
    job = load(baseline.run_dir / "config_train.yaml")
    again = run_job(job, mode="eval", run_dir=baseline.run_dir)
    for key in ("auc", "logloss", "accuracy", "n"):
        assert again.metrics["test"][key] == pytest.approx(baseline.metrics["test"][key], abs=1e-6), key


def assert_same_adapter(run_a, run_b, atol: float, rtol: float = 0.0) -> None:
    a, b = adapter_tensors(run_a.run_dir), adapter_tensors(run_b.run_dir)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol)


def test_resume_from_a_paused_run_equals_the_uninterrupted_run(storage, baseline):
    paused = run_job(tiny_job(storage, "resumed", "train.stop_at_step=6"))
    assert paused.metrics == {} and paused.report is None
    resumed = run_job(tiny_job(storage, "resumed"))  # same run name: continues from step 6
    steps = [s for s, _ in read_scalars(resumed.run_dir / "tensorboard")["train/loss"]]
    assert sorted(set(steps)) == list(range(1, 13))
    assert_same_adapter(resumed, baseline, atol=1e-6)


def test_resume_from_a_pause_exactly_on_an_epoch_boundary_equals_the_uninterrupted_run(storage, baseline):
    """64 rows / (2 ranks x 4 x 2) = 4 steps an epoch: a pause after step 4 checkpoints the last
    step of epoch 0; the resumed run must start epoch 1's permutation, not replay or skip one."""
    paused = run_job(tiny_job(storage, "epoch-edge", "train.stop_at_step=4"))
    assert paused.metrics == {}
    resumed = run_job(tiny_job(storage, "epoch-edge"))
    epochs = read_scalars(resumed.run_dir / "tensorboard")["train/epoch"]
    assert [round(v, 6) for s, v in sorted(epochs) if s in (4, 5)] == [1.0, 1.25]
    assert_same_adapter(resumed, baseline, atol=1e-6)


def test_gradient_accumulation_equals_a_larger_micro_batch(storage, baseline):
    bigger = run_job(tiny_job(storage, "accum1", "train.micro_batch_size=8", "train.grad_accum=1"))
    # Same rows per step, grouped differently: equal up to float summation order (amplified a
    # little by Adam's normalisation over 12 steps).
    assert_same_adapter(bigger, baseline, atol=1e-5, rtol=1e-4)


def test_workers_with_an_empty_node_local_home_prepare_the_model_and_equal_the_shared_home_run(
        storage, baseline, tmp_path):
    """Multi-node without a shared $DISTREC_HOME: both ranks find no model folder and build the
    converted SmolLM2 and the tiny model at the same moment, each inside its gloo group."""
    from fixtures_data import smollm2_gguf

    home = tmp_path / "node-local-home"
    gguf = smollm2_gguf()
    (home / "raw" / "smollm2").mkdir(parents=True)
    (home / "raw" / "smollm2" / gguf.name).symlink_to(gguf)  # the wheel's file, as a fetch would leave it
    run = run_job(tiny_job(storage, "nodelocal", f"ray.worker_env={{DISTREC_HOME: {home}}}"))
    built = sorted(p.name for p in (home / "models").iterdir() if not p.name.startswith("."))
    assert [n.split("-")[0] for n in built] == ["SmolLM2", "tiny"]
    for name in built:
        assert all((home / "models" / name / f).stat().st_size > 0
                   for f in ("config.json", "model.safetensors", "tokenizer.json"))
    assert_same_adapter(run, baseline, atol=1e-6)  # the resume tests' standard


def test_killed_worker_restarts_from_its_checkpoint_to_the_identical_adapter(storage, baseline):
    """Issue 8: SIGKILL of the last rank after step 5's update (checkpoints at 3, 6, 9, 12):
    Ray Train restarts the group from step 3, steps 4-5 run again, and the run ends exactly
    where the uninterrupted one did, having consumed every training row once per epoch."""
    from distrec.train.faults import consumed
    from distrec.eval.tensorboard import read_texts

    killed = run_job(tiny_job(storage, "killed", "ray.max_failures=1", "debug.kill_at_steps=[5]",
                              "debug.record_samples=true"))
    assert (killed.run_dir / "faults" / "killed_at_step_5").is_file()
    assert any("resumed at step 3" in t for t in read_texts(killed.run_dir / "tensorboard")["events/resume"])
    assert_same_adapter(killed, baseline, atol=1e-6)
    by_epoch, raw = consumed(killed.run_dir)
    assert sorted(by_epoch) == [0, 1, 2]
    for epoch, ids in by_epoch.items():
        assert len(ids) == len(set(ids)) == 64, epoch  # 64 rows = 4 steps x 16: every row exactly once
    assert raw > 2 * 12  # one record per rank and step, plus the steps that ran twice


def test_kill_during_a_checkpoint_copy_leaves_the_previous_one_to_resume_from(storage, baseline):
    """Issue 8: the last rank dies half-way through copying step 6's checkpoint into storage.
    The half-written folder is never registered; with ``num_to_keep=1`` step 3's checkpoint is
    still there, the restart resumes from it, and the run ends with the uninterrupted adapter.
    At the end the one kept checkpoint is the last step's, complete (both ranks' files)."""
    from distrec.train.faults import SNAPSHOT
    from distrec.eval.tensorboard import read_texts

    run = run_job(tiny_job(storage, "ckptkill", "ray.max_failures=1", "ray.num_to_keep=1",
                           "debug.kill_in_checkpoint_at_steps=[6]"))
    partial_name, copied, _, total = (run.run_dir / "faults" / "killed_in_checkpoint_6").read_text().split()[:4]
    snapshot = json.loads((storage / "ckptkill" / SNAPSHOT).read_text())
    registered = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]
    partial = storage / "ckptkill" / partial_name
    assert partial_name not in registered
    assert 0 < int(copied) < int(total)
    assert partial.is_dir() and not (partial / "rng_rank1.pt").exists()  # on disk, rank 1's part unfinished
    assert any("resumed at step 3" in t for t in read_texts(run.run_dir / "tensorboard")["events/resume"])
    assert_same_adapter(run, baseline, atol=1e-6)

    assert len(registered) == 1 and snapshot["latest_checkpoint_result"]["metrics"]["step"] == 12
    kept = storage / "ckptkill" / registered[0]
    assert json.loads((kept / "state.json").read_text())["step"] == 12
    assert {"rng_rank0.pt", "rng_rank1.pt"} <= {p.name for p in kept.iterdir()}
    shards = {p.name for p in (kept / "ds").rglob("*") if p.is_file()}
    assert any("rank_0" in n or "rank0" in n for n in shards) and any("rank_1" in n or "rank1" in n for n in shards), shards
    assert sum(1 for _ in partial.rglob("*") if _.is_file()) < sum(1 for _ in kept.rglob("*") if _.is_file())


def kill_driver_after_first_checkpoint(storage, name: str, ray_local, log: Path) -> None:
    """Start `distrec train` (the tiny job, BASE settings) as a subprocess on the test cluster and
    SIGKILL its process group once Ray Train has registered a checkpoint in ``storage`` (a local
    folder or a URI); the driver's output goes to ``log``."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from distrec.storage_uri import locate

    args = [f"ray.storage_path={storage}", f"ray.run_name={name}", *BASE]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "distrec", "train", "--config", str(TINY), *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    snapshot = locate(storage) / name / "checkpoint_manager_snapshot.json"  # Ray Train's record of saved checkpoints
    while not (snapshot.is_file() and "checkpoint_" in snapshot.read_text()):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_killed_driver_then_same_run_name_resumes_from_its_checkpoint(storage, baseline, ray_local, tmp_path):
    """Issue 8: SIGKILL the `distrec train` driver once its first checkpoint is in storage;
    re-running with the same run name resumes (it does not start over) and ends where the
    uninterrupted run did. The baseline, a new name, shows no resume: never by accident."""
    from distrec.eval.tensorboard import read_texts

    kill_driver_after_first_checkpoint(storage, "driverkill", ray_local, tmp_path / "driver.log")
    assert not (storage / "driverkill" / "distrec" / "metrics_train.json").exists()  # it really died mid-run

    resumed = run_job(tiny_job(storage, "driverkill"))
    events = read_texts(resumed.run_dir / "tensorboard").get("events/resume", [])
    assert any(t.startswith("resumed at step") and "step 0 " not in t for t in events), events
    assert_same_adapter(resumed, baseline, atol=1e-6)
    assert "events/resume" not in read_texts(baseline.run_dir / "tensorboard")


def test_golden_per_step_losses_of_the_tiny_lora_ctr_run(baseline):
    """12 steps, 2 ZeRO-3 workers, fp32 (tests/golden.py)."""
    from golden import check

    scalars = read_scalars(baseline.run_dir / "tensorboard")
    losses = scalars["train/loss"]
    assert [s for s, _ in losses] == list(range(1, 13))
    check("tiny_lora_ctr", [v for _, v in losses])
    # The loop's FLOP counter is live: model TFLOP/s and MFU (against a measured CPU matmul rate) every step.
    for tag in ("throughput/model_tflops_per_s", "throughput/mfu"):
        values = np.array([v for _, v in scalars[tag]])
        assert len(values) == 12 and np.all(np.isfinite(values)) and np.all(values > 0), tag


def test_length_grouped_training_pads_less_and_consumes_every_row_once(storage, baseline):
    """train.group_by_length: the same rows each epoch, once each, in micro-batches of similar length."""
    from distrec.train.faults import consumed

    grouped = run_job(tiny_job(storage, "grouped", "train.group_by_length=true", "train.group_steps=4",
                               "debug.record_samples=true"))
    per_epoch, raw = consumed(grouped.run_dir)
    assert raw == 2 * 12 and sorted(per_epoch) == [0, 1, 2]
    for ids in per_epoch.values():
        assert len(ids) == len(set(ids)) == 64  # 4 steps x 16 rows: the whole 64-row split, once
    mean = lambda run: np.mean([v for _, v in read_scalars(run.run_dir / "tensorboard")["data/padding_fraction"]])  # noqa: E731
    assert mean(grouped) < 0.5 * mean(baseline), (mean(grouped), mean(baseline))


def test_shared_prefix_training_equals_the_plain_run_and_runs_fewer_tokens(storage, baseline, tmp_path):
    """train.share_prefix: each micro-batch's common prompt prefix runs once, through the same
    ZeRO-3 engine; the adapter after 12 steps equals the plain run's up to float rounding.
    ``distrec predict`` scores the run's test rows as its own evaluation did (it builds the
    model with the same trunk attention)."""
    from distrec.data import storage as tables
    from distrec.predict.driver import predict
    from distrec.predict.pipeline import PredictOptions
    from distrec.train.artefacts import ensure_prepared

    job = tiny_job(storage, "prefix", "train.share_prefix=true")
    shared = run_job(job)
    assert_same_adapter(shared, baseline, atol=1e-5, rtol=1e-4)
    through = lambda run: sum(v for _, v in read_scalars(run.run_dir / "tensorboard")["data/forward_tokens"])  # noqa: E731
    assert through(shared) < 0.95 * through(baseline), (through(shared), through(baseline))

    rows = tables.open_split(ensure_prepared(job), "test").select(["sample_id", "user_id", "item_id", "timestamp"])
    pq.write_table(rows, tmp_path / "rows.parquet")
    predict(str(shared.run_dir), str(tmp_path / "rows.parquet"), str(tmp_path / "out"), PredictOptions(progress=False))
    got = pq.read_table(tmp_path / "out").to_pandas()
    want = pq.read_table(shared.run_dir / "predictions_test.parquet").to_pandas()
    merged = got.merge(want, on="sample_id", suffixes=("", "_run"))
    assert len(merged) == len(want) == rows.num_rows > 1
    np.testing.assert_allclose(merged.p_yes, merged.p_yes_run, atol=1e-5)
