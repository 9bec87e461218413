"""End-of-run report: curves from the TensorBoard events, a metrics table, and where things are.

The report is rebuilt from the event files (not from in-memory state) so it shows
exactly what TensorBoard shows, and can be regenerated for any finished run.
Scalar tags are grouped into one PNG each by name (see ``CURVE_GROUPS``):
``train/loss*``, ``train/lr*``, ``train/grad_norm*``, ``throughput/*`` and ``eval/*``.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Mapping

from matplotlib.figure import Figure

from distrec.train.monitor import flatten_dict, read_scalars

CURVE_GROUPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (file stem, title, tag prefixes): a tag belongs to the first group one of whose prefixes it starts with.
    ("train_loss", "train/loss", ("train/loss",)),
    ("train_lr", "train/lr", ("train/lr",)),
    ("train_grad_norm", "train/grad_norm", ("train/grad_norm",)),
    ("throughput", "throughput", ("throughput/", "train/throughput", "train/samples_per_s", "train/tokens_per_s")),
    ("eval", "eval metrics", ("eval/",)),
)

TENSORBOARD_KEY = "tensorboard"
"""Key of the TensorBoard folder in ``paths`` (``format_summary`` prints the launch command for it)."""

PLOTS_DIR = "plots"
"""Subfolder of the run dir holding the report's PNGs."""


def format_value(value: Any) -> str:
    """Floats with 4 decimals (NaN as ``nan``), ints and bools as is, anything else via str."""
    if isinstance(value, bool) or isinstance(value, numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        return "nan" if math.isnan(float(value)) else f"{float(value):.4f}"
    return str(value)


def group_tags(tags: list[str]) -> dict[str, list[str]]:
    """Map each group stem of ``CURVE_GROUPS`` to its sorted tags; groups without tags are left out."""
    groups: dict[str, list[str]] = {}
    for tag in sorted(tags):
        for stem, _, prefixes in CURVE_GROUPS:
            if tag.startswith(prefixes):
                groups.setdefault(stem, []).append(tag)
                break
    return groups


def plot_group(title: str, series: Mapping[str, list[tuple[int, float]]], path: Path) -> Path:
    """One PNG with a subplot per tag (metrics of one group can have very different scales)."""
    n = len(series)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax, (tag, points) in zip(axes, series.items()):
        steps = [s for s, _ in points]
        values = [v for _, v in points]
        ax.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3)
        ax.set_title(tag, fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)  # Figure without pyplot: rendered by Agg, no global backend state.
    return path


def _markdown_table(header: tuple[str, str], rows: list[tuple[str, str]]) -> list[str]:
    """Rows of a two-column markdown table."""
    lines = [f"| {header[0]} | {header[1]} |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return lines


def _all_paths(run_dir: Path, log_dir: Path, paths: Mapping[str, Any]) -> dict[str, str]:
    """Run dir and TensorBoard dir first, then the caller's paths (predictions, adapter, checkpoints...)."""
    merged = {"run_dir": str(run_dir), TENSORBOARD_KEY: str(log_dir)}
    merged.update({name: str(value) for name, value in paths.items()})
    return merged


def write_report(run_dir: Path, log_dir: Path, summary: dict, paths: dict) -> Path:
    """Write ``run_dir/report.md`` and its PNG curves under ``run_dir/plots``.

    Args:
        run_dir: folder of the run; receives report.md and plots/.
        log_dir: TensorBoard folder to read the scalars from.
        summary: final metrics, possibly nested (flattened with dots in the table).
        paths: name -> path of the run's outputs (predictions, adapter, checkpoints...).

    Returns:
        Path of report.md.
    """
    run_dir = Path(run_dir)
    scalars = read_scalars(log_dir)
    groups = group_tags(list(scalars))
    curves: list[tuple[str, str]] = []
    for stem, title, _ in CURVE_GROUPS:
        tags = groups.get(stem)
        if not tags:
            continue
        png = plot_group(title, {tag: scalars[tag] for tag in tags}, run_dir / PLOTS_DIR / f"{stem}.png")
        curves.append((title, png.relative_to(run_dir).as_posix()))

    metric_rows = [(name, format_value(v)) for name, v in flatten_dict(summary).items()]
    path_rows = [(name, f"`{value}`") for name, value in _all_paths(run_dir, Path(log_dir), paths).items()]
    lines = ["# Run report", "", "## Metrics", ""]
    lines += _markdown_table(("metric", "value"), metric_rows) if metric_rows else ["(no metrics)"]
    lines += ["", "## Curves", ""]
    lines += [f"### {title}\n\n![{title}]({rel})\n" for title, rel in curves] or ["(no scalars logged)", ""]
    lines += ["## Paths", ""]
    lines += _markdown_table(("what", "path"), path_rows)
    lines += ["", f"View the curves with `tensorboard --logdir {log_dir}`.", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def format_summary(summary: dict, paths: dict) -> str:
    """Plain-text table printed at the end of a run.

    Metric rows (nested keys flattened with dots, floats with 4 decimals), then a
    ``paths`` section, then ``tensorboard --logdir <paths["tensorboard"]>``.

    Raises:
        ValueError: ``paths`` has no ``"tensorboard"`` entry.
    """
    if TENSORBOARD_KEY not in paths:
        raise ValueError(f"paths needs a {TENSORBOARD_KEY!r} entry for the launch command; got {sorted(paths)}")
    metric_rows = [(name, format_value(v)) for name, v in flatten_dict(summary).items()]
    path_rows = [(str(name), str(value)) for name, value in paths.items()]
    width = max(len(name) for name, _ in [("metric", ""), ("paths", "")] + metric_rows + path_rows)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{name.ljust(width)}  {value}" for name, value in metric_rows]
    lines += [f"{'-' * width}  {'-' * 10}", "paths"]
    lines += [f"{name.ljust(width)}  {value}" for name, value in path_rows]
    lines += [f"tensorboard --logdir {paths[TENSORBOARD_KEY]}"]
    return "\n".join(lines)
