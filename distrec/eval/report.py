"""End-of-run report: curves from the TensorBoard events, a metrics table, and where things are.

The report is rebuilt from the event files (not from in-memory state) so it shows
exactly what TensorBoard shows, and can be regenerated for any finished run, on local disk or
object storage (:func:`publish_report`).
Scalar tags are grouped into one PNG each by name (see ``CURVE_GROUPS``):
``train/loss*``, ``train/lr*``, ``train/grad_norm*``, ``throughput/*`` and ``eval/*``.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Mapping

from matplotlib.figure import Figure

from distrec.storage_uri import Location, Staging
from distrec.eval.tensorboard import flatten_dict, read_scalars

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


def _markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Rows of a markdown table with ``len(header)`` columns."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


INTERVALS_KEY, BOOTSTRAP_KEY, ENVIRONMENT_KEY = "ci", "bootstrap", "environment"
"""Summary entries that are not metric rows: ``<split>.ci.<metric>`` = [low, high] and
``<split>.bootstrap.*`` (:mod:`distrec.eval.intervals`), ``environment.*``
(:mod:`distrec.eval.environment`)."""


def split_summary(summary: Mapping[str, Any]) -> tuple[dict, dict, dict, dict]:
    """Flattened summary -> ``(metrics, intervals, bootstrap, environment)``.

    ``intervals`` maps a metric's name (``test.auc``) to its ``[low, high]`` (from
    ``test.ci.auc``); ``bootstrap`` maps a split prefix (``test``) to how its intervals were
    drawn; ``environment`` holds the ``environment.*`` entries without the prefix.
    """
    metrics: dict[str, Any] = {}
    intervals: dict[str, Any] = {}
    bootstrap: dict[str, dict[str, Any]] = {}
    environment: dict[str, Any] = {}
    for name, value in flatten_dict(summary).items():
        parts = name.split(".")
        if parts[0] == ENVIRONMENT_KEY and len(parts) > 1:
            environment[".".join(parts[1:])] = value
        elif INTERVALS_KEY in parts[:-1]:
            i = parts.index(INTERVALS_KEY)
            intervals[".".join(parts[:i] + parts[i + 1:])] = value
        elif BOOTSTRAP_KEY in parts[:-1]:
            i = parts.index(BOOTSTRAP_KEY)
            bootstrap.setdefault(".".join(parts[:i]), {})[".".join(parts[i + 1:])] = value
        else:
            metrics[name] = value
    return metrics, intervals, bootstrap, environment


def format_interval(interval: Any) -> str:
    """``[low, high]`` with :func:`format_value`'s digits; empty for anything else."""
    if isinstance(interval, (list, tuple)) and len(interval) == 2:
        return f"[{format_value(interval[0])}, {format_value(interval[1])}]"
    return ""


def metrics_section(summary: Mapping[str, Any]) -> list[str]:
    """The metrics table (with a CI column when any metric has an interval), how the intervals
    were drawn, and the environment the run recorded."""
    metrics, intervals, bootstrap, environment = split_summary(summary)
    if not metrics:
        return ["(no metrics)"]
    if intervals:
        level = next((info.get("level") for info in bootstrap.values() if "level" in info), 0.95)
        rows = [(name, format_value(v), format_interval(intervals.get(name))) for name, v in metrics.items()]
        lines = _markdown_table(("metric", "value", f"{100 * level:g} % CI"), rows)
    else:
        lines = _markdown_table(("metric", "value"), [(name, format_value(v)) for name, v in metrics.items()])
    for prefix, info in bootstrap.items():
        unit = info.get("unit", "user")
        lines += ["", f"`{prefix}`: {100 * info.get('level', 0.95):g} % intervals by {info.get('method', '')} "
                      f"bootstrap over {unit}s: {info.get('resamples')} replicates, seed {info.get('seed')}, "
                      f"{info.get('users')} {unit}s (`distrec.eval.intervals`)."]
    if environment:
        lines += ["", "## Environment", ""]
        lines += _markdown_table(("what", "value"), [(name, format_value(v)) for name, v in environment.items()])
    return lines


def _all_paths(run_dir: Path, log_dir: Path, paths: Mapping[str, Any]) -> dict[str, str]:
    """Run dir and TensorBoard dir first, then the caller's paths (predictions, adapter, checkpoints...);
    the caller's ``run_dir`` / ``tensorboard`` entries, if any, replace the first two's values."""
    merged = {"run_dir": str(run_dir), TENSORBOARD_KEY: str(log_dir)}
    merged.update({name: str(value) for name, value in paths.items()})
    return merged


def write_report(run_dir: Path, log_dir: Path, summary: dict, paths: dict) -> Path:
    """Write ``run_dir/report.md`` and its PNG curves under ``run_dir/plots``.

    Args:
        run_dir: folder of the run; receives report.md and plots/.
        log_dir: TensorBoard folder to read the scalars from.
        summary: final metrics, possibly nested (flattened with dots in the table); intervals
            (``<split>.ci.<metric>``), their ``<split>.bootstrap`` settings and ``environment.*``
            are shown apart (:func:`split_summary`).
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

    shown = _all_paths(run_dir, Path(log_dir), paths)
    path_rows = [(name, f"`{value}`") for name, value in shown.items()]
    lines = ["# Run report", "", "## Metrics", ""]
    lines += metrics_section(summary)
    lines += ["", "## Curves", ""]
    lines += [f"### {title}\n\n![{title}]({rel})\n" for title, rel in curves] or ["(no scalars logged)", ""]
    lines += ["## Paths", ""]
    lines += _markdown_table(("what", "path"), path_rows)
    lines += ["", f"View the curves with `tensorboard --logdir {shown[TENSORBOARD_KEY]}`.", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def publish_report(run: Location, summary: dict, paths: dict) -> Path | str:
    """:func:`write_report` for a run folder on local disk or object storage.

    Off local disk the TensorBoard folder is downloaded into a staging folder, the report is
    written there (its paths name the run's URIs) and report.md and plots/ are uploaded.
    Returns report.md's path (local) or URI.
    """
    with Staging(run) as staging:
        staging.pull("tensorboard")
        shown = {"run_dir": run.uri, **paths} if staging.remote else paths
        report = write_report(staging.local, staging.local / "tensorboard", summary, shown)
        staging.publish()
    return report if run.is_local else (run / report.name).uri


def format_summary(summary: dict, paths: dict) -> str:
    """Plain-text table printed at the end of a run.

    Metric rows (nested keys flattened with dots, floats with 4 decimals, a metric's interval
    after its value), then a ``paths`` section, then ``tensorboard --logdir <paths["tensorboard"]>``.
    The environment is left to report.md.

    Raises:
        ValueError: ``paths`` has no ``"tensorboard"`` entry.
    """
    if TENSORBOARD_KEY not in paths:
        raise ValueError(f"paths needs a {TENSORBOARD_KEY!r} entry for the launch command; got {sorted(paths)}")
    metrics, intervals, _, _ = split_summary(summary)
    metric_rows = [(name, f"{format_value(v)} {format_interval(intervals.get(name))}".rstrip())
                   for name, v in metrics.items()]
    path_rows = [(str(name), str(value)) for name, value in paths.items()]
    width = max(len(name) for name, _ in [("metric", ""), ("paths", "")] + metric_rows + path_rows)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{name.ljust(width)}  {value}" for name, value in metric_rows]
    lines += [f"{'-' * width}  {'-' * 10}", "paths"]
    lines += [f"{name.ljust(width)}  {value}" for name, value in path_rows]
    lines += [f"tensorboard --logdir {paths[TENSORBOARD_KEY]}"]
    return "\n".join(lines)
