"""CFT under Ray Train + DeepSpeed ZeRO-3 (2 gloo workers, tiny Llama, real ML-100K next-item
samples): both branches train, the logged loss is L_n + λ·L_c, and gradient accumulation of the
token-weighted loss equals a larger micro-batch (global Σw normalisation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from distrec.config import load_job_config
from distrec.train.launcher import run_job
from distrec.eval.tensorboard import read_scalars

pytestmark = pytest.mark.ray
JOB = Path(__file__).resolve().parents[1] / "jobs" / "tiny_cft.yaml"


def cft_job(storage: Path, name: str, *extra: str):
    return load_job_config(JOB, [f"ray.storage_path={storage}", f"ray.run_name={name}", *extra])


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cft-runs")


@pytest.fixture(scope="module")
def cft_run(ray_local, storage):
    return run_job(cft_job(storage, "cft"))


def test_cft_trains_both_terms_and_logs_their_sum(cft_run):
    scalars = read_scalars(cft_run.run_dir / "tensorboard")
    total, ln, lc = (np.array([v for _, v in scalars[k]]) for k in ("train/loss", "train/loss_n", "train/loss_c"))
    assert len(total) == 8
    np.testing.assert_allclose(total, ln + 0.1 * lc, rtol=1e-5)
    assert total[-3:].mean() < total[:3].mean() - 1.0, total
    assert lc[-3:].mean() < lc[:3].mean(), lc
    metrics = cft_run.metrics
    assert metrics["test"]["tokens"] > 0 and np.isfinite(metrics["test"]["loss"])


def test_accumulated_weighted_loss_equals_a_larger_micro_batch(storage, cft_run):
    bigger = run_job(cft_job(storage, "cft-accum1", "train.micro_batch_size=8", "train.grad_accum=1"))
    a = load_file(str(bigger.run_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(cft_run.run_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_golden_per_step_losses_of_the_tiny_cft_run(cft_run):
    """8 steps of L_n + λ·L_c, 2 ZeRO-3 workers, fp32 (tests/golden.py)."""
    from golden import check

    scalars = read_scalars(cft_run.run_dir / "tensorboard")
    check("tiny_cft", [v for _, v in scalars["train/loss"]])
    check("tiny_cft_loss_c", [v for _, v in scalars["train/loss_c"]])


def test_counterfactual_prompt_once_trains_as_the_packed_branches_and_runs_fewer_tokens(storage, cft_run):
    """``cft.share_cf_prompt`` (default): the counterfactual prompt, the same for every instance, runs
    once per micro-batch through the same ZeRO-3 engine; after 8 steps the adapter equals the
    packed run's (``false``: one counterfactual row per instance) up to float rounding, and the
    default ran fewer tokens."""
    packed = run_job(cft_job(storage, "cft-packed", "cft.share_cf_prompt=false"))
    a = load_file(str(packed.run_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(cft_run.run_dir / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)
    through = lambda run: sum(v for _, v in read_scalars(run.run_dir / "tensorboard")["data/forward_tokens"])  # noqa: E731
    assert through(cft_run) < 0.95 * through(packed), (through(cft_run), through(packed))
