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


def test_submitted_tiny_job_succeeds_and_writes_its_outputs(head, tmp_path):
    storage = tmp_path / "runs"
    entry = [sys.executable, "-m", "distrec", "train", "--config", "jobs/tiny.yaml",
             f"ray.storage_path={storage}", "ray.run_name=submitted"]
    for _ in range(30):  # the head's job agent registers a few seconds after `ray start` returns
        done = subprocess.run(
            [RAY, "job", "submit", f"--address={DASHBOARD}", f"--working-dir={REPO}", "--", *entry],
            env=head, capture_output=True, text=True, timeout=900,
        )
        if "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(3)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout, done.stdout[-2000:]
    run_dir = storage / "submitted" / "distrec"
    metrics = json.loads((run_dir / "metrics_train.json").read_text())
    assert metrics["test"]["n"] == 32
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
