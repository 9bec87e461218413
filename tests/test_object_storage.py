"""``ray.storage_path: s3://bucket/prefix`` end to end, on a real S3-compatible server (moto's
server mode on 127.0.0.1; pyarrow talks HTTP to it, boto3 reads back independently).

The tiny job of tests/test_train_ray.py trains on 2 ZeRO-3 workers with its storage in the
bucket; the driver is SIGKILLed after the first checkpoint, the same run name resumes it from
the bucket and ends with the adapter of an uninterrupted run on local disk; checkpoints,
TensorBoard events, report, adapter, predictions and metrics are in the bucket, nothing is
written to a local folder named after the URI, and ``distrec eval --run s3://...`` reproduces
the run's test metrics.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from s3_server import get, keys, s3_bucket
from safetensors.torch import load
from test_train_ray import REPO, adapter_tensors, kill_driver_after_first_checkpoint, tiny_job

from distrec.train.launcher import run_job
from distrec.eval.tensorboard import read_scalars, read_texts

pytestmark = pytest.mark.ray
BUCKET = "distrec-runs"
PREFIX = "team/runs"


@pytest.fixture(scope="module")
def s3_storage():
    with s3_bucket(BUCKET) as uri:
        yield f"{uri}/{PREFIX}"


def _checkpoint_steps(run: str) -> dict[str, int]:
    """Registered checkpoint folder -> its state.json step, all read from the bucket."""
    snapshot = json.loads(get(BUCKET, f"{PREFIX}/{run}/checkpoint_manager_snapshot.json"))
    names = [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]]
    return {n: json.loads(get(BUCKET, f"{PREFIX}/{run}/{n}/state.json"))["step"] for n in names}


def test_s3_storage_survives_a_killed_driver_and_holds_every_output(s3_storage, ray_local, tmp_path, monkeypatch):
    from sklearn.metrics import roc_auc_score
    from typer.testing import CliRunner

    from distrec.cli import app

    monkeypatch.chdir(tmp_path)  # a URI taken for a relative local path would land here
    baseline = run_job(tiny_job(tmp_path / "local", "baseline"))

    kill_driver_after_first_checkpoint(s3_storage, "s3kill", ray_local, tmp_path / "driver.log")
    run = f"{s3_storage}/s3kill/distrec"
    prefix = f"{PREFIX}/s3kill/distrec"
    assert f"{prefix}/metrics_train.json" not in keys(BUCKET, prefix)  # it really died mid-run
    before = _checkpoint_steps("s3kill")
    assert before and min(before.values()) >= 3, before
    # The events of the steps up to the registered checkpoint were uploaded before it counted.
    early = [s for s, _ in read_scalars(f"{run}/tensorboard")["train/loss"]]
    assert set(range(1, min(before.values()) + 1)) <= set(early), early

    resumed = run_job(tiny_job(s3_storage, "s3kill"))
    assert resumed.run_dir == run and resumed.report == f"{run}/report.md"
    events = read_texts(f"{run}/tensorboard").get("events/resume", [])
    assert any(t.startswith("resumed at step") and "step 0 " not in t for t in events), events
    assert sorted({s for s, _ in read_scalars(f"{run}/tensorboard")["train/loss"]}) == list(range(1, 13))

    saved = load(get(BUCKET, f"{prefix}/adapter/adapter_model.safetensors"))
    reference = adapter_tensors(baseline.run_dir)
    assert saved.keys() == reference.keys()
    for name in saved:
        torch.testing.assert_close(saved[name], reference[name], rtol=0, atol=1e-6)

    after = _checkpoint_steps("s3kill")
    assert max(after.values()) == 12 and len(after) <= 2  # ray.num_to_keep=2 (tiny.yaml default)
    last = max(after, key=after.get)
    stored = keys(BUCKET, f"{PREFIX}/s3kill/{last}/")
    assert {f"{PREFIX}/s3kill/{last}/rng_rank{r}.pt" for r in (0, 1)} <= set(stored)
    assert any("/ds/" in k for k in stored), stored

    objects = set(keys(BUCKET, prefix))
    for rel in ("config_train.yaml", "metrics_train.json", "report.md", "plots/train_loss.png",
                "selected_trainable.safetensors", "adapter/adapter_config.json", "predictions_test.parquet",
                "predictions_valid.parquet", "diagnostics/partition_rank0.json", "diagnostics/partition_rank1.json"):
        assert f"{prefix}/{rel}" in objects, rel
    assert any(k.startswith(f"{prefix}/tensorboard/events.out.tfevents.") for k in objects)
    metrics = json.loads(get(BUCKET, f"{prefix}/metrics_train.json"))
    assert metrics == resumed.metrics
    preds = pq.read_table(io.BytesIO(get(BUCKET, f"{prefix}/predictions_test.parquet"))).to_pandas()
    assert len(preds) == 32 and preds.sample_id.is_unique
    assert metrics["test"]["auc"] == pytest.approx(roc_auc_score(preds.label, preds.p_yes), abs=1e-6)
    report = get(BUCKET, f"{prefix}/report.md").decode()
    assert f"tensorboard --logdir {run}/tensorboard" in report and f"`{run}/adapter`" in report
    assert not list(tmp_path.glob("s3*")) and not (REPO / "s3:").exists()  # nothing went to a local "s3:" folder

    # TensorBoard's own reader (boto3 behind its gfile) opens the bucket: `tensorboard --logdir s3://...` works.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    native = EventAccumulator(f"{run}/tensorboard", size_guidance={"scalars": 0}).Reload()
    ours = read_scalars(f"{run}/tensorboard")["train/loss"]
    assert sorted((e.step, e.value) for e in native.Scalars("train/loss")) == ours

    result = CliRunner().invoke(app, ["eval", "--run", run])
    assert result.exit_code == 0, result.output
    again = json.loads(get(BUCKET, f"{prefix}/metrics_eval.json"))
    for key in ("auc", "logloss", "accuracy", "n"):
        assert np.isclose(again["test"][key], metrics["test"][key], rtol=0, atol=1e-6), key


def test_eimf_checkpoints_go_to_the_bucket_and_train_as_on_local_disk(s3_storage, ray_local, tmp_path, monkeypatch):
    """EIMF in the loop with ``ray.storage_path: s3://...``: the per-epoch checkpoints and the
    exported stage are in the bucket, and its weights equal a local-disk run's."""
    from eimf_toy import toy_items, toy_samples
    from safetensors.torch import load_file
    from test_eimf_ray import cfg_of, train_ray

    monkeypatch.chdir(tmp_path)
    items, samples = toy_items(48), toy_samples(32, 48)
    _, _, local = train_ray(samples, items, cfg_of(epochs=1), None, workers=1, storage=tmp_path, name="eimf-local")
    remote, _, run_dir = train_ray(samples, items, cfg_of(epochs=1), None, workers=1, storage=tmp_path,
                                   name="eimf-s3", ray_storage=s3_storage)
    stored = keys(BUCKET, f"{PREFIX}/eimf-s3-stage/")
    assert any("/checkpoint_" in k and k.endswith("state.json") for k in stored), stored
    assert f"{PREFIX}/eimf-s3-stage/distrec/eimf/model.safetensors" in stored
    a = load_file(str(local / "model.safetensors"))
    assert a.keys() == remote.keys() and all(torch.equal(a[k], remote[k]) for k in a)
    assert not list(tmp_path.glob("s3*"))
