"""95 % confidence intervals of evaluation metrics by bootstrap over users.

Rows of one user are not independent (the same taste, the same history), so the resampling
unit is the user, not the row: each bootstrap replicate draws ``U`` users with replacement
from the ``U`` users of the split and keeps all rows of every drawn user, as often as the
user was drawn (the cluster bootstrap; Davison & Hinkley, *Bootstrap Methods and their
Application*, 1997, §3.8). The interval is the percentile interval of the replicates
(Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, §13.3), computed by
:func:`scipy.stats.bootstrap` with ``method="percentile"`` on the array of user indices.

Every metric here is written as a function of the user multiplicities ``c`` (how many times
each user was drawn; all ones = the original split), so one replicate costs a matrix
product for the mean-type metrics (LogLoss, accuracy, HR@K, NDCG@K, Recall@K, UAUC) and a
sparse product for the global AUC (its Mann-Whitney form over tied score groups). At ``c = 1`` every
statistic equals the point metric of :mod:`distrec.metrics.ctr_metrics` /
:mod:`distrec.metrics.ranking_metrics`.

Defaults: :data:`N_RESAMPLES` = 2000 replicates, seed :data:`SEED` = 0
(``numpy.random.default_rng``), level :data:`LEVEL` = 0.95. The same seed and the same
users give the same replicates for every metric, and for both runs of a paired comparison.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

N_RESAMPLES = 2000
"""Bootstrap replicates per interval (Efron & Tibshirani 1993, §13.3: 1000-2000 for percentile intervals)."""

SEED = 0
"""Seed of ``numpy.random.default_rng`` that draws the replicates."""

LEVEL = 0.95
"""Two-sided confidence level."""

METHOD = "percentile"
"""``scipy.stats.bootstrap`` method (the percentile interval)."""

AUC_BATCH = 256
"""Replicates per block in :func:`weighted_auc_statistic` (bounds its [distinct scores, block] arrays)."""

CTR_NAMES = ("auc", "uauc", "logloss", "accuracy")
"""CTR metrics that get an interval (those of :func:`distrec.metrics.ctr_metrics.ctr_metrics`)."""


@dataclass(frozen=True)
class UserStatistic:
    """Metrics as functions of user multiplicities.

    Attributes:
        names: one name per metric (M of them).
        n_users: U, the users of the split.
        fn: ``counts [B, U] (float) -> values [M, B]``; row ``b`` of ``counts`` says how many
            times each user is in replicate ``b``. NaN where a metric is undefined.
    """

    names: tuple[str, ...]
    n_users: int
    fn: Callable[[np.ndarray], np.ndarray]

    def point(self) -> np.ndarray:
        """The metrics on the original split (every user once), shape [M]."""
        return self.fn(np.ones((1, self.n_users)))[:, 0]


def user_codes(user_ids: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, int]:
    """``(codes [n] in 0..U-1, U)``: each row's user as an index into the sorted distinct users."""
    users = np.asarray(user_ids).reshape(-1)
    _, codes = np.unique(users, return_inverse=True)
    return codes.reshape(-1).astype(np.int64), int(codes.max()) + 1 if codes.size else 0


def multiplicities(indices: np.ndarray, n_users: int) -> np.ndarray:
    """Counts [B, U] (float64) of each user in each row of drawn user indices [B, U]."""
    idx = np.atleast_2d(np.asarray(indices, dtype=np.int64))
    offsets = (np.arange(idx.shape[0], dtype=np.int64) * n_users)[:, None]
    flat = np.bincount((idx + offsets).ravel(), minlength=idx.shape[0] * n_users)
    return flat.reshape(idx.shape[0], n_users).astype(np.float64)


def ratio_statistic(names: Sequence[str], numerators: np.ndarray, denominators: np.ndarray) -> UserStatistic:
    """Metrics of the form ``Σ_u c_u a_u / Σ_u c_u d_u`` (a mean over rows, or over users).

    Args:
        names: M names.
        numerators: [U, M], e.g. the sum of a per-row value over the user's rows.
        denominators: [U, M] or [U], e.g. the user's row count (1/0 to average over users).
    """
    num = np.asarray(numerators, dtype=np.float64).reshape(len(numerators), -1)
    den = np.asarray(denominators, dtype=np.float64)
    den = np.broadcast_to(den.reshape(len(den), -1), num.shape)

    def fn(counts: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return ((counts @ num) / (counts @ den)).T

    return UserStatistic(tuple(names), num.shape[0], fn)


def weighted_auc_statistic(labels: np.ndarray, probs: np.ndarray, codes: np.ndarray, n_users: int) -> UserStatistic:
    """Global ROC AUC of the replicate: rows weighted by their user's multiplicity.

    A row of weight ``c`` counts as ``c`` copies of itself. In the Mann-Whitney form (Hanley &
    McNeil 1982), with W⁺_g / W⁻_g the weight of positive / negative rows whose score is the
    g-th smallest distinct score,
    ``AUC = Σ_g W⁺_g (Σ_{h<g} W⁻_h + ½ W⁻_g) / (Σ W⁺ · Σ W⁻)``: a tie counts half, as in
    :func:`sklearn.metrics.roc_auc_score` (``tests/test_intervals.py`` checks the two agree on
    copied rows). The per-(user, score) counts are built once, so a replicate costs one sparse
    product. NaN when a replicate has only one class.
    """
    from scipy import sparse

    y = np.asarray(labels).reshape(-1).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    distinct, group = np.unique(p, return_inverse=True)
    shape = (distinct.size, n_users)
    # [G, U]: rows of user u whose score is the g-th smallest distinct one, positives and negatives apart
    pos = sparse.csr_matrix(((y == 1).astype(np.float64), (group.reshape(-1), codes)), shape=shape)
    neg = sparse.csr_matrix(((y != 1).astype(np.float64), (group.reshape(-1), codes)), shape=shape)

    def fn(counts: np.ndarray) -> np.ndarray:
        out = np.empty(counts.shape[0])
        for lo in range(0, counts.shape[0], AUC_BATCH):
            c = counts[lo:lo + AUC_BATCH].T  # [U, b]
            wp, wn = pos @ c, neg @ c  # [G, b]
            below = np.cumsum(wn, axis=0) - wn
            den = wp.sum(axis=0) * wn.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[lo:lo + AUC_BATCH] = np.where(den > 0, (wp * (below + 0.5 * wn)).sum(axis=0) / den, math.nan)
        return out[None, :]

    return UserStatistic(("auc",), n_users, fn)


def stack(*stats: UserStatistic) -> UserStatistic:
    """One statistic computing all of ``stats`` on the same replicate (names concatenated)."""
    n_users = {s.n_users for s in stats}
    if len(n_users) != 1:
        raise ValueError(f"statistics over different user sets: {sorted(n_users)}")
    return UserStatistic(tuple(n for s in stats for n in s.names), n_users.pop(),
                         lambda counts: np.concatenate([s.fn(counts) for s in stats]))


def ctr_statistic(labels, probs, user_ids) -> UserStatistic:
    """AUC, UAUC, LogLoss and accuracy (:data:`CTR_NAMES`, that order) as functions of users.

    The same definitions as :func:`distrec.metrics.ctr_metrics.ctr_metrics`: LogLoss of
    probabilities clipped to ``[PROB_EPS, 1 - PROB_EPS]``, accuracy at ``prob >= 0.5``, UAUC
    the unweighted mean of per-user AUCs over users with both labels. At ``c = 1`` the
    statistic equals ``ctr_metrics`` on the whole split (``tests/test_intervals.py``).
    """
    from sklearn.metrics import roc_auc_score

    from distrec.metrics.ctr_metrics import PROB_EPS

    y = np.asarray(labels).reshape(-1).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    codes, n_users = user_codes(user_ids)
    clipped = np.clip(p, PROB_EPS, 1.0 - PROB_EPS)
    row_loss = -np.log(np.where(y == 1, clipped, 1.0 - clipped))
    row_correct = (p >= 0.5).astype(np.int64) == y
    sums = np.stack([np.bincount(codes, weights=v, minlength=n_users) for v in (row_loss, row_correct)], axis=1)
    user_auc = np.zeros(n_users)
    mixed = np.zeros(n_users, dtype=bool)
    for u, idx in pd.Series(np.arange(codes.size)).groupby(codes).indices.items():
        if np.unique(y[idx]).size == 2:
            user_auc[u], mixed[u] = roc_auc_score(y[idx], p[idx]), True
    uauc = ratio_statistic(("uauc",), user_auc, mixed)
    means = ratio_statistic(("logloss", "accuracy"), sums, np.bincount(codes, minlength=n_users))
    return stack(weighted_auc_statistic(y, p, codes, n_users), uauc, means)


def ranking_statistic(ranks, user_ids, ks: Sequence[int], hit_names: Sequence[str] = ("hr",)) -> UserStatistic:
    """``<hit>@K`` (one per name in ``hit_names``, e.g. ``hr``, ``recall``) and ``ndcg@K`` per K.

    With one relevant item per row, HR@K = Recall@K; both are the mean over rows of "the
    target is in the top K". Per-user sums come from
    :func:`distrec.metrics.ranking_metrics.rank_metrics` on each user's rows.
    Order: for each K, the hit names then ``ndcg@K``.
    """
    from distrec.metrics.ranking_metrics import rank_metrics

    r = np.asarray(ranks, dtype=np.int64).reshape(-1)
    codes, n_users = user_codes(user_ids)
    # (reported name, rank_metrics key) per metric
    keys = [pair for k in ks for pair in (*((f"{h}@{k}", f"hr@{k}") for h in hit_names), (f"ndcg@{k}", f"ndcg@{k}"))]
    sums = np.zeros((n_users, len(keys)))
    for u, idx in pd.Series(np.arange(codes.size)).groupby(codes).indices.items():
        m = rank_metrics(r[idx], ks=tuple(ks))
        sums[u] = [m[key] * idx.size for _, key in keys]
    return ratio_statistic([name for name, _ in keys], sums, np.bincount(codes, minlength=n_users))


@dataclass(frozen=True)
class Intervals:
    """Point values, percentile intervals and the replicates of a :class:`UserStatistic`.

    Attributes:
        names: M metric names.
        point, low, high: [M]; NaN bounds where the metric is undefined or U < 2.
        distribution: [M, B] replicate values (B = 0 when U < 2).
        n_users, n_resamples, seed, level: how the replicates were drawn.
    """

    names: tuple[str, ...]
    point: np.ndarray
    low: np.ndarray
    high: np.ndarray
    distribution: np.ndarray
    n_users: int
    n_resamples: int
    seed: int
    level: float

    def interval(self, name: str) -> tuple[float, float]:
        i = self.names.index(name)
        return float(self.low[i]), float(self.high[i])

    def p_value(self, name: str) -> float:
        """Two-sided bootstrap p-value of "the statistic is 0" (for a paired difference).

        The replicates are shifted to the null (centred on 0) and compared with the observed
        value: ``p = (1 + #{b : |θ*_b − θ̂| ≥ |θ̂|}) / (1 + B)`` over the defined replicates
        (Davison & Hinkley 1997, §4.4, eq. 4.11 with the ``+1`` correction). θ̂ = 0 gives
        p = 1; NaN when θ̂ is undefined.
        """
        i = self.names.index(name)
        theta, reps = float(self.point[i]), self.distribution[i]
        reps = reps[np.isfinite(reps)]
        if math.isnan(theta) or reps.size == 0:
            return math.nan
        return float((1 + np.count_nonzero(np.abs(reps - theta) >= abs(theta))) / (1 + reps.size))

    def summary(self) -> dict[str, Any]:
        """``{"ci": {name: [low, high]}, "bootstrap": {...}}`` for a metrics JSON."""
        return {
            "ci": {n: [float(lo), float(hi)] for n, lo, hi in zip(self.names, self.low, self.high)},
            "bootstrap": {"unit": "user", "users": self.n_users, "resamples": self.n_resamples,
                          "seed": self.seed, "level": self.level, "method": METHOD},
        }


def bootstrap_users(stat: UserStatistic, *, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                    level: float = LEVEL) -> Intervals:
    """Percentile intervals of every metric of ``stat`` from one set of user replicates.

    :func:`scipy.stats.bootstrap` resamples the user indices ``0..U-1`` (``rng =
    default_rng(seed)``); each replicate is turned into multiplicities and fed to ``stat``.
    A bound is taken over the replicates where the metric is defined (``nanquantile``, the
    same linear interpolation as SciPy's) when some replicate leaves it undefined.

    Raises:
        ValueError: ``n_resamples < 1`` or ``level`` outside (0, 1).
    """
    from scipy.stats import bootstrap

    if n_resamples < 1 or not 0.0 < level < 1.0:
        raise ValueError(f"need n_resamples >= 1 and 0 < level < 1, got {n_resamples} and {level}")
    point = stat.point()
    m = len(stat.names)
    if stat.n_users < 2:  # one user cannot be resampled into anything but itself
        nan = np.full(m, math.nan)
        return Intervals(stat.names, point, nan, nan, np.zeros((m, 0)), stat.n_users, n_resamples, seed, level)

    def statistic(users: np.ndarray, axis: int = -1) -> np.ndarray:
        values = stat.fn(multiplicities(users, stat.n_users))
        return values if np.ndim(users) > 1 else values[:, 0]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy's DegenerateDataWarning for undefined replicates; handled below
        res = bootstrap((np.arange(stat.n_users),), statistic, n_resamples=n_resamples, vectorized=True,
                        method=METHOD, confidence_level=level, rng=np.random.default_rng(seed))
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64).reshape(m, -1)
    low = np.asarray(res.confidence_interval.low, dtype=np.float64).reshape(m).copy()
    high = np.asarray(res.confidence_interval.high, dtype=np.float64).reshape(m).copy()
    alpha = (1.0 - level) / 2.0
    for i in np.flatnonzero(np.isnan(low) | np.isnan(high)):
        finite = dist[i][np.isfinite(dist[i])]
        if finite.size:
            low[i], high[i] = np.quantile(finite, [alpha, 1.0 - alpha])
    return Intervals(stat.names, point, low, high, dist, stat.n_users, n_resamples, seed, level)


def ctr_intervals(labels, probs, user_ids, **kwargs) -> dict[str, Any]:
    """``{"ci": {auc, uauc, logloss, accuracy: [low, high]}, "bootstrap": {...}}`` (see :func:`bootstrap_users`)."""
    return bootstrap_users(ctr_statistic(labels, probs, user_ids), **kwargs).summary()


def ranking_intervals(ranks, user_ids, ks: Sequence[int], hit_names: Sequence[str] = ("hr",), **kwargs) -> dict[str, Any]:
    """``{"ci": {hr@K / recall@K, ndcg@K: [low, high]}, "bootstrap": {...}}`` from 0-based ranks (-1 = miss)."""
    return bootstrap_users(ranking_statistic(ranks, user_ids, ks, hit_names), **kwargs).summary()
