"""`ray job submit` against a real head started with `ray start --head` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.ray_cluster]
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
DASHBOARD = "http://127.0.0.1:8275"


@pytest.fixture
def head(tmp_path_factory):
    import ray

    ray.shutdown()  # the suite's in-process cluster, if any: `ray stop` below ends every Ray process
    ray_tmp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "token",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo"}
    subprocess.run(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", "--port=6390", "--dashboard-host=127.0.0.1",
         "--dashboard-port=8275", "--num-cpus=3", "--disable-usage-stats", f"--temp-dir={ray_tmp}"],
        env=env, check=True, capture_output=True, timeout=120,
    )
    try:
        yield env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def submit(env: dict, *entry: str) -> subprocess.CompletedProcess:
    for _ in range(30):  # the head's job agent registers a few seconds after `ray start` returns
        done = subprocess.run(
            [RAY, "job", "submit", f"--address={DASHBOARD}", f"--working-dir={REPO}", "--", *entry],
            env=env, capture_output=True, text=True, timeout=900,
        )
        if "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout, done.stdout[-2000:]
    return done


def test_submitted_tiny_job_and_its_predict_job_succeed_and_write_their_outputs(head, tmp_path):
    import pyarrow.parquet as pq

    storage = tmp_path / "runs"
    submit(head, sys.executable, "-m", "distrec", "train", "--config", "jobs/tiny.yaml",
           f"ray.storage_path={storage}", "ray.run_name=submitted")
    run_dir = storage / "submitted" / "distrec"
    metrics = json.loads((run_dir / "metrics_train.json").read_text())
    assert metrics["test"]["n"] == 32
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    own = pq.read_table(run_dir / "predictions_test.parquet")
    pq.write_table(_test_rows(run_dir), tmp_path / "rows.parquet")
    done = submit(head, sys.executable, "-m", "distrec", "predict", "--run", str(run_dir),
                  "--input", str(tmp_path / "rows.parquet"), "--out", str(tmp_path / "scored"), "--actors", "2")
    assert "predicted 32 of 32 rows (ctr)" in done.stdout, done.stdout[-2000:]
    got = pq.read_table(tmp_path / "scored").to_pandas().merge(own.to_pandas(), on="sample_id", suffixes=("", "_run"))
    assert len(got) == 32 and (got.p_yes - got.p_yes_run).abs().max() <= 1e-5


def _test_rows(run_dir: Path):
    from distrec.config import load_job_config
    from distrec.data import storage
    from distrec.train.artefacts import ensure_prepared

    job = load_job_config(run_dir / "config_train.yaml")
    return storage.open_split(ensure_prepared(job), "test").select(["sample_id", "user_id", "item_id", "timestamp"])
