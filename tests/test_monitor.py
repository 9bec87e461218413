"""Monitor writes TensorBoard events that read back exactly; disabled monitors write nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distrec.train.monitor import Monitor, peak_memory_bytes
from distrec.eval.tensorboard import read_hparams, read_scalars, read_texts


def test_scalars_text_hparams_round_trip(tmp_path: Path) -> None:
    log_dir = tmp_path / "tb"
    with Monitor(log_dir, enabled=True) as mon:
        # Values exactly representable in float32 (TensorBoard's storage type).
        for step, loss in [(0, 1.5), (1, 0.75), (2, 0.25)]:
            mon.scalars(step, {"train/loss": loss, "train/lr": torch.tensor(0.5), "note": "skip me"})
        mon.scalars(2, {"eval": {"auc": 0.625}})
        mon.text("config", 0, "lr: 0.0001\nmodel: tiny")
        mon.text("samples", 3, "user 7 -> **item 42**")
        mon.hparams(
            {"lr": 1e-4, "model": {"name": "tiny", "lora_r": 8}, "seed": None, "ks": [1, 5]},
            {"auc": 0.625, "split": "test"},
        )

    scalars = read_scalars(log_dir)
    assert scalars["train/loss"] == [(0, 1.5), (1, 0.75), (2, 0.25)]
    assert scalars["train/lr"] == [(0, 0.5), (1, 0.5), (2, 0.5)]
    assert scalars["eval/auc"] == [(2, 0.625)]  # nested dict joined with "/"
    assert "note" not in scalars  # non-numeric entries are skipped
    # HParams metrics come from the hparams subfolder, prefixed; the string metric is left out.
    assert scalars["hparams/auc"] == [(0, 0.625)]
    assert "hparams/split" not in scalars

    assert read_texts(log_dir) == {"config": ["lr: 0.0001\nmodel: tiny"], "samples": ["user 7 -> **item 42**"]}

    hp = read_hparams(log_dir)
    assert hp == {
        "lr": pytest.approx(1e-4),
        "model.name": "tiny",
        "model.lora_r": 8.0,  # the plugin stores numbers as float64
        "seed": "None",
        "ks": "[1, 5]",
    }
    assert (log_dir / "hparams").is_dir()


def test_disabled_monitor_writes_nothing(tmp_path: Path) -> None:
    mon = Monitor(tmp_path / "tb", enabled=False)
    mon.scalars(0, {"train/loss": 1.0})
    mon.text("config", 0, "x")
    mon.hparams({"lr": 0.1}, {"auc": 0.5})
    mon.flush()
    mon.close()
    assert list(tmp_path.iterdir()) == []
    assert read_scalars(tmp_path) == {} and read_texts(tmp_path) == {}


def _vm_hwm_bytes() -> int:
    """Peak RSS as the kernel reports it in /proc (independent of getrusage)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_peak_memory_matches_proc() -> None:
    hwm = _vm_hwm_bytes()
    peak = peak_memory_bytes()
    # Both are the kernel's RSS high-water mark in KiB, read through different (approximate,
    # per-CPU-counted) paths: they agree closely, while a KiB/byte mix-up would be 1024x off.
    assert peak["host_peak_rss"] == pytest.approx(hwm, rel=0.05)
    assert ("cuda_max_allocated" in peak) == torch.cuda.is_available()
