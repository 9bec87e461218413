"""Paired comparison of two runs on the rows both scored (``distrec compare RUN_A RUN_B``).

Each run folder holds its per-row test results as ``predictions_<split>.parquet``:

- CTR runs (``distrec train``, task ``ctr``): ``sample_id, user_id, label, p_yes``;
- ranking runs (generative runs with grounded evaluation, EIMF stages ``<out_dir>/ibim`` and
  ``<out_dir>/eimf``): ``sample_id, user_id, item_id, rank`` (0-based rank of the target,
  -1 = not in the top max K), written by :func:`ranking_predictions`, whose schema metadata
  records the cut-offs K and the hit-metric names.

The two runs must have scored exactly the same rows (same ``sample_id`` set, same user and
label / target per row); otherwise :class:`~distrec.errors.DataError` names the rows. For each
metric, the difference Δ = B − A gets a 95 % interval and a p-value from the *paired*
bootstrap over users (:mod:`distrec.eval.intervals`: the same user replicates score both runs,
so what the two runs share cancels). For AUC, DeLong's test adds the classical p-value:
DeLong, DeLong & Clarke-Pearson (1988), "Comparing the areas under two or more correlated
receiver operating characteristic curves: a nonparametric approach", *Biometrics* 44(3),
837-845, with the structural components computed from midranks (Sun & Xu 2014, *IEEE Signal
Processing Letters* 21(11), 1389-1393). DeLong treats rows as independent.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from distrec.errors import DataError
from distrec.eval.intervals import (
    LEVEL,
    N_RESAMPLES,
    SEED,
    UserStatistic,
    bootstrap_users,
    ctr_statistic,
    ranking_statistic,
)

PREDICTIONS = "predictions_{split}.parquet"
"""Per-row results of a split, in a run folder."""

KS_KEY, HIT_KEY = b"distrec.ks", b"distrec.hit_names"
"""Schema metadata of a ranking predictions file: JSON lists of the K cut-offs and hit-metric names."""

CTR_COLUMNS = ("sample_id", "user_id", "label", "p_yes")
RANKING_COLUMNS = ("sample_id", "user_id", "item_id", "rank")
DISPLAY = {"auc": "AUC", "uauc": "UAUC", "logloss": "LogLoss", "accuracy": "accuracy", "hr": "HR", "ndcg": "NDCG",
           "recall": "Recall"}
MAX_NAMED = 10
"""Differing rows named in an error message (then the count of the rest)."""


def ranking_predictions(sample_ids, user_ids, item_ids, ranks, ks: Sequence[int],
                        hit_names: Sequence[str] = ("hr",), top_item_ids: Sequence[Sequence[int]] | None = None,
                        ) -> pa.Table:
    """The per-row table of a ranking evaluation, sorted by ``sample_id``.

    Args:
        sample_ids, user_ids, item_ids: shape (n,); ``item_ids`` is the target item.
        ranks: shape (n,), 0-based rank of the target, -1 when not in the top ``max(ks)``.
        ks: the cut-offs the run evaluated; hit_names: ``("hr",)`` or ``("recall", "hr")``.
        top_item_ids: optional (n,) lists, each row's ranking (best first, ``max(ks)`` long),
            stored as ``top_item_ids`` (what ``distrec predict`` must reproduce).
    """
    order = np.argsort(np.asarray(sample_ids, dtype=np.int64), kind="stable")
    table = pa.table({
        "sample_id": np.asarray(sample_ids, dtype=np.int64)[order],
        "user_id": np.asarray(user_ids, dtype=np.int64)[order],
        "item_id": np.asarray(item_ids, dtype=np.int64)[order],
        "rank": np.asarray(ranks, dtype=np.int64)[order],
        **({"top_item_ids": pa.array([list(top_item_ids[i]) for i in order], pa.list_(pa.int64()))}
           if top_item_ids is not None else {}),
    })
    meta = {KS_KEY: json.dumps([int(k) for k in ks]).encode(), HIT_KEY: json.dumps(list(hit_names)).encode()}
    return table.replace_schema_metadata(meta)


@dataclass
class RunPredictions:
    """One run's per-row results: ``frame`` sorted by ``sample_id``; ``kind`` is ``ctr`` or ``ranking``."""

    path: Path
    kind: str
    frame: pd.DataFrame
    ks: tuple[int, ...] = ()
    hit_names: tuple[str, ...] = ()


def predictions_path(run: str | Path, split: str = "test") -> Path:
    """``run/predictions_<split>.parquet``, or under ``run/distrec/`` (a Ray Train run's folder).

    Raises:
        DataError: neither file exists (names both).
    """
    name = PREDICTIONS.format(split=split)
    candidates = [Path(run) / name, Path(run) / "distrec" / name]
    for path in candidates:
        if path.is_file():
            return path
    raise DataError(f"{run}: no per-row results for split {split!r} (looked for {', '.join(map(str, candidates))})")


def load_predictions(run: str | Path, split: str = "test") -> RunPredictions:
    """Read and check a run's per-row results.

    Raises:
        DataError: missing file, columns of neither kind, a duplicated ``sample_id``, a NaN or
            infinite ``p_yes`` / ``rank`` (named by sample_id), or a ranking file without its K
            metadata.
    """
    import pyarrow.parquet as pq

    path = predictions_path(run, split)
    table = pq.read_table(path)
    cols = set(table.column_names)
    if set(CTR_COLUMNS) <= cols:
        kind, wanted = "ctr", CTR_COLUMNS
    elif set(RANKING_COLUMNS) <= cols:
        kind, wanted = "ranking", RANKING_COLUMNS
    else:
        raise DataError(f"{path}: columns {sorted(cols)} are neither a CTR file {list(CTR_COLUMNS)} "
                        f"nor a ranking file {list(RANKING_COLUMNS)}")
    frame = table.select(list(wanted)).to_pandas().sort_values("sample_id", kind="stable").reset_index(drop=True)
    dup = frame["sample_id"][frame["sample_id"].duplicated()].unique()
    if dup.size:
        raise DataError(f"{path}: sample_id scored more than once: {_named(dup)}")
    value = "p_yes" if kind == "ctr" else "rank"
    bad = frame["sample_id"][~np.isfinite(frame[value].to_numpy(dtype=np.float64))].to_numpy()
    if bad.size:
        raise DataError(f"{path}: {value} is missing or not finite at sample_id {_named(bad)}; "
                        "metrics over such rows are meaningless")
    ks: tuple[int, ...] = ()
    hits: tuple[str, ...] = ()
    if kind == "ranking":
        meta = table.schema.metadata or {}
        if KS_KEY not in meta:
            raise DataError(f"{path}: a ranking file needs its cut-offs in the schema metadata {KS_KEY.decode()!r}")
        ks = tuple(int(k) for k in json.loads(meta[KS_KEY]))
        hits = tuple(json.loads(meta.get(HIT_KEY, b'["hr"]')))
    return RunPredictions(path, kind, frame, ks, hits)


def _named(values: np.ndarray) -> str:
    shown = ", ".join(str(int(v)) for v in values[:MAX_NAMED])
    return shown + (f" and {len(values) - MAX_NAMED} more" if len(values) > MAX_NAMED else "")


def check_same_rows(a: RunPredictions, b: RunPredictions) -> None:
    """Refuse two runs that did not score the same rows.

    Raises:
        DataError: different kinds; sample_ids only in one run (named, per run); or rows whose
            user, label (CTR) or target item (ranking) differ (named).
    """
    if a.kind != b.kind:
        raise DataError(f"{a.path} is a {a.kind} run and {b.path} a {b.kind} run; compare needs two of one kind")
    ids_a, ids_b = a.frame["sample_id"].to_numpy(), b.frame["sample_id"].to_numpy()
    only_a, only_b = np.setdiff1d(ids_a, ids_b), np.setdiff1d(ids_b, ids_a)
    if only_a.size or only_b.size:
        parts = [f"{len(x)} sample_id only in {p}" + (f": {_named(x)}" if len(x) else "")
                 for x, p in ((only_a, a.path), (only_b, b.path))]
        raise DataError("the runs scored different rows: " + "; ".join(parts)
                        + ". compare needs both runs scored on the same split of the same prepared data")
    for col in ("user_id", "label" if a.kind == "ctr" else "item_id"):
        differ = ids_a[a.frame[col].to_numpy() != b.frame[col].to_numpy()]
        if differ.size:
            raise DataError(f"{col} differs between {a.path} and {b.path} at sample_id {_named(differ)}: "
                            "the runs scored different data")


@dataclass(frozen=True)
class DeLong:
    """DeLong's paired test of two AUCs on the same rows: Δ = auc_b − auc_a, its variance, z, two-sided p."""

    auc_a: float
    auc_b: float
    variance: float
    z: float
    p: float


def structural_components(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's V10 (one per positive) and V01 (one per negative) from midranks.

    V10_i = mean over negatives j of ψ(X_i, Y_j), V01_j = mean over positives i of ψ(X_i, Y_j),
    ψ = 1 if X > Y, 1/2 if X = Y, 0 otherwise; the AUC is the mean of either. Computed in
    O(n log n): for a positive, (its rank among all rows − its rank among positives) counts the
    negatives below it, ties counting 1/2 (Sun & Xu 2014, eq. 8-9).
    """
    from scipy.stats import rankdata

    pos = np.asarray(labels).reshape(-1) == 1
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    m, n = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(s)
    v10 = (ranks[pos] - rankdata(s[pos])) / n
    v01 = 1.0 - (ranks[~pos] - rankdata(s[~pos])) / m
    return v10, v01


def delong(labels, scores_a, scores_b) -> DeLong:
    """DeLong's test that two scorings of the same rows have equal AUC.

    Var(Δ) = (S10_aa + S10_bb − 2 S10_ab) / m + (S01_aa + S01_bb − 2 S01_ab) / n, with S10, S01
    the sample covariances (ddof 1) of the structural components over the m positives and n
    negatives; z = Δ / √Var(Δ), p = 2 Φ(−|z|). Δ = 0 with Var = 0 (identical scorings) gives
    p = 1. NaN everywhere when a class is missing; NaN variance, z and p with fewer than two
    rows of a class.
    """
    from scipy.stats import norm

    y = np.asarray(labels).reshape(-1)
    m, n = int((y == 1).sum()), int((y != 1).sum())
    if m == 0 or n == 0:
        return DeLong(math.nan, math.nan, math.nan, math.nan, math.nan)
    (v10a, v01a), (v10b, v01b) = structural_components(y, scores_a), structural_components(y, scores_b)
    auc_a, auc_b = float(v10a.mean()), float(v10b.mean())
    if m < 2 or n < 2:
        return DeLong(auc_a, auc_b, math.nan, math.nan, math.nan)
    s10, s01 = np.cov(np.vstack([v10a, v10b])), np.cov(np.vstack([v01a, v01b]))
    var = float((s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n)
    delta = auc_b - auc_a
    if var <= 0.0:
        z = 0.0 if delta == 0 else math.copysign(math.inf, delta)
    else:
        z = delta / math.sqrt(var)
    return DeLong(auc_a, auc_b, max(var, 0.0), z, float(2.0 * norm.sf(abs(z))))


@dataclass(frozen=True)
class MetricComparison:
    """One metric of a paired comparison; ``*_ci`` are (low, high); ``p_delong`` only for AUC (else NaN)."""

    name: str
    a: float
    a_ci: tuple[float, float]
    b: float
    b_ci: tuple[float, float]
    delta: float
    delta_ci: tuple[float, float]
    p_bootstrap: float
    p_delong: float = math.nan


@dataclass
class Comparison:
    """The result of :func:`compare_runs`; :meth:`markdown` is the table to paste."""

    run_a: Path
    run_b: Path
    split: str
    kind: str
    n_rows: int
    n_users: int
    metrics: list[MetricComparison]
    n_resamples: int
    seed: int
    level: float

    def metric(self, name: str) -> MetricComparison:
        return next(m for m in self.metrics if m.name == name)

    def markdown(self) -> str:
        """A header line, the table (metric, A, B, Δ with intervals, both p-values) and how they were computed."""
        pct = f"{100 * self.level:g} %"
        lines = [
            f"A = `{self.run_a}`, B = `{self.run_b}`; split {self.split}: {self.n_rows:,} rows, "
            f"{self.n_users:,} users, scored by both.",
            "",
            f"| metric | A [{pct} CI] | B [{pct} CI] | Δ = B − A [{pct} CI] | p (paired bootstrap) | p (DeLong) |",
            "|---|---|---|---|---|---|",
        ]
        for m in self.metrics:
            lines.append(f"| {display_name(m.name)} | {_with_ci(m.a, m.a_ci)} | {_with_ci(m.b, m.b_ci)} | "
                         f"{_with_ci(m.delta, m.delta_ci, signed=True)} | {format_p(m.p_bootstrap)} | "
                         f"{format_p(m.p_delong) if not math.isnan(m.p_delong) else '—'} |")
        lines += [
            "",
            f"Intervals and bootstrap p-values: paired percentile bootstrap over users ({self.n_resamples} "
            f"replicates, seed {self.seed}; each replicate scores A, B and Δ on the same users). "
            "DeLong: DeLong et al. (1988), rows taken as independent, two-sided.",
        ]
        return "\n".join(lines)


def display_name(name: str) -> str:
    """``auc`` -> ``AUC``, ``hr@10`` -> ``HR@10``, ``ndcg@10`` -> ``NDCG@10``, ``recall@20`` -> ``Recall@20``."""
    if name in DISPLAY:
        return DISPLAY[name]
    head, _, k = name.partition("@")
    return f"{DISPLAY.get(head, head)}@{k}"


def format_p(p: float) -> str:
    """4 decimals; below 0.0001 as ``<0.0001``; NaN as ``nan``."""
    if math.isnan(p):
        return "nan"
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def _with_ci(value: float, ci: tuple[float, float], signed: bool = False) -> str:
    f = "{:+.4f}" if signed else "{:.4f}"
    return f"{f.format(value)} [{f.format(ci[0])}, {f.format(ci[1])}]"


def _statistic(run: RunPredictions, ks: Sequence[int], hit_names: Sequence[str]) -> UserStatistic:
    f = run.frame
    if run.kind == "ctr":
        return ctr_statistic(f["label"].to_numpy(), f["p_yes"].to_numpy(), f["user_id"].to_numpy())
    return ranking_statistic(f["rank"].to_numpy(), f["user_id"].to_numpy(), ks, hit_names)


def compare_runs(run_a: str | Path, run_b: str | Path, split: str = "test", *, n_resamples: int = N_RESAMPLES,
                 seed: int = SEED, level: float = LEVEL) -> Comparison:
    """Every metric of both runs, and B − A, with paired-bootstrap intervals and p-values (+ DeLong for AUC).

    Ranking runs are compared at the cut-offs both evaluated (and the hit names both report).

    Raises:
        DataError: a run lacks per-row results, or the runs scored different rows (named).
    """
    a, b = load_predictions(run_a, split), load_predictions(run_b, split)
    check_same_rows(a, b)
    ks = tuple(k for k in a.ks if k in b.ks)
    hits = tuple(h for h in a.hit_names if h in b.hit_names) or ("hr",)
    if a.kind == "ranking" and not ks:
        raise DataError(f"{a.path} (K = {list(a.ks)}) and {b.path} (K = {list(b.ks)}) share no cut-off K")
    stat_a, stat_b = _statistic(a, ks, hits), _statistic(b, ks, hits)
    names, m = stat_a.names, len(stat_a.names)

    def paired(counts: np.ndarray) -> np.ndarray:
        va, vb = stat_a.fn(counts), stat_b.fn(counts)
        return np.concatenate([va, vb, vb - va])

    boot = bootstrap_users(UserStatistic(tuple(f"{s}:{n}" for s in ("A", "B", "delta") for n in names), stat_a.n_users, paired),
                           n_resamples=n_resamples, seed=seed, level=level)
    test = delong(a.frame["label"], a.frame["p_yes"], b.frame["p_yes"]) if a.kind == "ctr" else None
    rows = []
    for i, name in enumerate(names):
        rows.append(MetricComparison(
            name=name,
            a=float(boot.point[i]), a_ci=boot.interval(f"A:{name}"),
            b=float(boot.point[m + i]), b_ci=boot.interval(f"B:{name}"),
            delta=float(boot.point[2 * m + i]), delta_ci=boot.interval(f"delta:{name}"),
            p_bootstrap=boot.p_value(f"delta:{name}"),
            p_delong=test.p if (test is not None and name == "auc") else math.nan,
        ))
    return Comparison(a.path.parent, b.path.parent, split, a.kind, len(a.frame), stat_a.n_users, rows,
                      n_resamples, seed, level)
