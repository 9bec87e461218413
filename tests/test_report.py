"""Run report built from real TensorBoard events, and the end-of-run text table."""

from __future__ import annotations

import re
from pathlib import Path

from distrec.eval.report import format_summary, write_report
from distrec.train.monitor import Monitor


def _write_events(log_dir: Path) -> None:
    with Monitor(log_dir, enabled=True) as mon:
        for step in range(5):
            mon.scalars(step, {"train/loss": 2.0 - 0.25 * step, "train/lr": 0.001, "throughput/samples_per_s": 8.0})
        mon.scalars(4, {"eval/auc": 0.75, "eval/logloss": 0.5, "misc/ignored": 1.0})


def test_write_report_embeds_existing_pngs_and_metrics(tmp_path: Path) -> None:
    log_dir = tmp_path / "tb"
    _write_events(log_dir)
    paths = {"predictions": tmp_path / "preds.parquet", "adapter": tmp_path / "adapter", "checkpoints": tmp_path / "ckpt"}
    summary = {"eval": {"auc": 0.7512345, "logloss": 0.5}, "n": 1000}

    report = write_report(tmp_path, log_dir, summary, paths)

    text = report.read_text()
    assert report == tmp_path / "report.md"
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    # Groups with data: loss, lr, throughput, eval; grad_norm has none and is skipped.
    assert sorted(Path(i).name for i in images) == ["eval.png", "throughput.png", "train_loss.png", "train_lr.png"]
    for rel in images:
        png = tmp_path / rel
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "plots" / "train_grad_norm.png").exists()
    assert "| eval.auc | 0.7512 |" in text
    assert "| eval.logloss | 0.5000 |" in text
    assert "| n | 1000 |" in text
    for value in [tmp_path, log_dir, *paths.values()]:
        assert f"`{value}`" in text


def test_format_summary_aligned_with_tensorboard_line(tmp_path: Path) -> None:
    summary = {"auc": 0.75, "uauc": 0.6666666, "hr@10": 0.1, "n": 42}
    paths = {"tensorboard": tmp_path / "tb", "predictions": tmp_path / "p.parquet"}
    out = format_summary(summary, paths)
    lines = out.splitlines()
    assert lines[-1] == f"tensorboard --logdir {tmp_path / 'tb'}"
    for name, value in [("auc", "0.7500"), ("uauc", "0.6667"), ("hr@10", "0.1000"), ("n", "42")]:
        row = next(line for line in lines if line.split()[0] == name)
        assert row.split() == [name, value]
    # The value column starts at the same offset in every metric and path row.
    names = {"auc", "uauc", "hr@10", "n", "tensorboard", "predictions"}
    rows = [line for line in lines[:-1] if line.split()[0] in names]
    assert len(rows) == len(names)
    assert len({len(line) - len(line.split(maxsplit=1)[1]) for line in rows}) == 1
    assert "paths" in lines
