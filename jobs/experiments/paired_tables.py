"""Markdown for multi-seed experiment tables (issue 19).

Three tables and a reading, from finished runs:

- every run: each metric with its 95 % interval (bootstrap over users, ``metrics["ci"]``);
- every row over seeds: mean ± sd, next to the mean half-width of one run's interval, so a
  reader sees how the seed-to-seed spread compares with one run's uncertainty;
- every row against its ablation baseline, per seed: Δ = row − baseline with its paired-bootstrap
  interval and p-value (and DeLong's p for AUC), from :func:`distrec.eval.compare.compare_runs`
  on the two runs' per-row results;
- the reading: per metric, how many of those differences have an interval that excludes 0.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Callable, Sequence

Seed = int | None


def fmt(x: float, signed: bool = False) -> str:
    """4 decimals (``+`` sign when ``signed``); ``nan`` for NaN or None."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def with_ci(metrics: dict, key: str) -> str:
    """``0.6364 [0.6012, 0.6701]``, or the bare value when the run recorded no interval."""
    ci = (metrics.get("ci") or {}).get(key)
    value = fmt(metrics.get(key, math.nan))
    return f"{value} [{fmt(ci[0])}, {fmt(ci[1])}]" if ci else value


def half_width(metrics: dict, key: str) -> float:
    """Half the width of a run's interval of ``key`` (NaN without one)."""
    ci = (metrics.get("ci") or {}).get(key)
    return (ci[1] - ci[0]) / 2 if ci and not any(v is None or math.isnan(v) for v in ci) else math.nan


def mean_sd(values: Sequence[float], signed: bool = False) -> str:
    """``mean ± sd`` (sample sd) over seeds; the value alone for one seed; ``signed`` for differences."""
    if len(values) == 1:
        return fmt(values[0], signed)
    return f"{fmt(statistics.mean(values), signed)} ± {fmt(statistics.stdev(values))}"


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return statistics.mean(finite) if finite else math.nan


def _seed_label(seed: Seed) -> str:
    return "config" if seed is None else str(seed)


def _header(cells: list[str]) -> list[str]:
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


def runs_table(runs: list[tuple[str, Seed, dict, list[str]]], keys: Sequence[str], names: Sequence[str],
               extra_headers: Sequence[str] = ()) -> str:
    """One line per run: ``(row, seed, test metrics, extra cells)`` -> metrics with intervals, then the extra cells."""
    lines = _header(["row", "seed", *(f"{n} [95 % CI]" for n in names), *extra_headers])
    for row, seed, metrics, extra in runs:
        lines.append("| " + " | ".join([row, _seed_label(seed), *(with_ci(metrics, k) for k in keys), *extra]) + " |")
    return "\n".join(lines)


def seeds_table(rows: Sequence[str], seeds: Sequence[Seed], metrics_of: Callable[[str, Seed], dict],
                keys: Sequence[str], names: Sequence[str]) -> str:
    """Per row and metric: mean ± sd over seeds, and (in brackets) one run's mean interval half-width."""
    lines = _header(["row", *(f"{n}: mean ± sd over {len(seeds)} seeds (one run's CI ±)" for n in names)])
    for row in rows:
        cells = []
        for key in keys:
            per_seed = [metrics_of(row, s) for s in seeds]
            cells.append(f"{mean_sd([m[key] for m in per_seed])} (±{fmt(_nanmean([half_width(m, key) for m in per_seed]))})")
        lines.append("| " + " | ".join([row, *cells]) + " |")
    return "\n".join(lines)


def compare_pairs(pairs: Sequence[tuple[str, str]], seeds: Sequence[Seed], dir_of: Callable[[str, Seed], Path],
                  **kwargs) -> list[tuple[str, str, Seed, object]]:
    """:func:`distrec.eval.compare.compare_runs` (baseline = A, row = B) for every pair and seed."""
    from distrec.eval.compare import compare_runs

    return [(row, base, seed, compare_runs(dir_of(base, seed), dir_of(row, seed), **kwargs))
            for row, base in pairs for seed in seeds]


def comparison_table(comparisons: list[tuple[str, str, Seed, object]], keys: Sequence[str],
                     names: Sequence[str]) -> str:
    """Per pair and seed: Δ [95 % CI] and the paired-bootstrap p of each metric (+ DeLong's p for AUC)."""
    from distrec.eval.compare import format_p

    head = ["row vs baseline", "seed"]
    for key, name in zip(keys, names):
        head += [f"Δ{name} [95 % CI]", "p"] + (["p DeLong"] if key == "auc" else [])
    lines = _header(head)
    for row, base, seed, result in comparisons:
        cells = [f"{row} vs {base}", _seed_label(seed)]
        for key in keys:
            m = result.metric(key)
            cells += [f"{fmt(m.delta, True)} [{fmt(m.delta_ci[0], True)}, {fmt(m.delta_ci[1], True)}]",
                      format_p(m.p_bootstrap)] + ([format_p(m.p_delong)] if key == "auc" else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def excludes_zero(ci: tuple[float, float]) -> bool:
    return ci[0] > 0 or ci[1] < 0


def reading(comparisons: list[tuple[str, str, Seed, object]], keys: Sequence[str], names: Sequence[str]) -> list[str]:
    """How much of each difference the intervals cover, per metric and per pair (Markdown bullets)."""
    if not comparisons:
        return []
    lines = []
    for key, name in zip(keys, names):
        ms = [c[3].metric(key) for c in comparisons]
        text = (f"- Δ{name}: {sum(excludes_zero(m.delta_ci) for m in ms)} of {len(ms)} paired differences have a "
                f"95 % interval that excludes 0 (bootstrap p < 0.05: {sum(m.p_bootstrap < 0.05 for m in ms)}")
        if key == "auc":
            text += f"; DeLong p < 0.05: {sum(m.p_delong < 0.05 for m in ms)}"
        lines.append(text + ").")
    pairs = list(dict.fromkeys((row, base) for row, base, _, _ in comparisons))
    for row, base in pairs:
        runs = [c[3] for c in comparisons if (c[0], c[1]) == (row, base)]
        parts = []
        for key, name in zip(keys, names):
            deltas = [r.metric(key).delta for r in runs]
            kept = sum(excludes_zero(r.metric(key).delta_ci) for r in runs)
            parts.append(f"Δ{name} {mean_sd(deltas, signed=True)} (interval excludes 0 in {kept} of {len(runs)} seeds)")
        lines.append(f"- {row} vs {base}: " + "; ".join(parts) + ".")
    return lines
