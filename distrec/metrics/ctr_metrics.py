"""Click-through-rate metrics for the ReLLaX yes/no objective.

The model emits P("Yes") per (user, item) sample; we score those probabilities
against 0/1 labels with the usual CTR metrics. UAUC (user-averaged AUC) is the
metric the ReLLa line of papers reports next to global AUC: a global AUC can be
inflated by users who simply click more, UAUC only rewards ordering within a user.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from distrec.metrics.finite import require_finite

PROB_EPS = 1e-7
"""Probabilities are clipped to [PROB_EPS, 1 - PROB_EPS] so LogLoss stays finite."""


def _auc_or_nan(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present (AUC is undefined there)."""
    if labels.size == 0 or np.unique(labels).size < 2:
        return math.nan
    return float(roc_auc_score(labels, probs))


def user_auc(labels: np.ndarray, probs: np.ndarray, user_ids: np.ndarray) -> tuple[float, int]:
    """Unweighted mean of per-user AUC over users that have both a positive and a negative.

    Vectorised with the Mann-Whitney form of AUC, computed for all users at once:
    AUC_u = (sum of within-user ranks of u's positives - P(P+1)/2) / (P * N),
    with tied scores given their average rank (a tie counts as half a correct pair,
    as in roc_auc_score).

    Args:
        labels: shape (n,), 0/1.
        probs: shape (n,), predicted P(label = 1).
        user_ids: shape (n,), any hashable id per sample.

    Returns:
        (uauc, users_counted); uauc is NaN when no user has both labels.
    """
    frame = pd.DataFrame({"user": user_ids, "label": labels, "prob": probs})
    frame["rank"] = frame.groupby("user", sort=False)["prob"].rank(method="average")
    frame["pos_rank"] = frame["rank"] * frame["label"]
    per_user = frame.groupby("user", sort=False).agg(
        pos=("label", "sum"), count=("label", "size"), pos_rank=("pos_rank", "sum")
    )
    pos = per_user["pos"].to_numpy(dtype=np.float64)
    neg = per_user["count"].to_numpy(dtype=np.float64) - pos
    mixed = (pos > 0) & (neg > 0)
    if not mixed.any():
        return math.nan, 0
    pos, neg = pos[mixed], neg[mixed]
    aucs = (per_user["pos_rank"].to_numpy(dtype=np.float64)[mixed] - pos * (pos + 1) / 2) / (pos * neg)
    return float(aucs.mean()), int(mixed.sum())


def ctr_metrics(
    labels: Sequence[int] | np.ndarray,
    probs: Sequence[float] | np.ndarray,
    user_ids: Sequence[Any] | np.ndarray,
    *,
    sample_ids: Sequence[Any] | np.ndarray | None = None,
    where: str = "",
) -> dict[str, float]:
    """CTR metrics for one evaluation split.

    Args:
        labels: shape (n,), 0/1 ground truth.
        probs: shape (n,), predicted P(label = 1).
        user_ids: shape (n,), the user of each sample (for UAUC).
        sample_ids: shape (n,), named in the error on a non-finite prob (else the row is).
        where: the evaluation point for that error, e.g. "split 'valid', step 7".

    Raises:
        ModelError: a prob is NaN or infinite (:func:`distrec.metrics.finite.require_finite`).

    Returns:
        dict with ``auc`` (NaN if a single class is present), ``uauc`` (NaN if no user
        has both labels), ``uauc_users`` (users counted in UAUC), ``logloss`` (probs
        clipped to [1e-7, 1 - 1e-7]), ``accuracy`` (threshold 0.5, ``prob >= 0.5`` is
        a positive), ``n`` and ``positive_rate``.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    users = np.asarray(user_ids).reshape(-1)
    if not (y.shape == p.shape == users.shape):
        raise ValueError(
            f"labels, probs and user_ids must have the same length, got {y.size}, {p.size}, {users.size}"
        )
    if y.size == 0:
        raise ValueError("ctr_metrics needs at least one sample")
    require_finite(p, sample_ids, where=where, what="score")
    uauc, uauc_users = user_auc(y, p, users)
    return {
        "auc": _auc_or_nan(y, p),
        "uauc": uauc,
        "uauc_users": uauc_users,
        # Clip only here: clipping before AUC would tie scores that differ below 1e-7.
        "logloss": float(log_loss(y, np.clip(p, PROB_EPS, 1.0 - PROB_EPS), labels=[0, 1])),
        "accuracy": float(accuracy_score(y, (p >= 0.5).astype(np.int64))),
        "n": int(y.size),
        "positive_rate": float(y.mean()),
    }
