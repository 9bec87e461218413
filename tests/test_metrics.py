"""CTR and ranking metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distrec.metrics.ctr_metrics import ctr_metrics
from distrec.metrics.ranking_metrics import interleave_beams, rank_metrics, recall_at_k


def test_ctr_metrics_four_samples_by_hand() -> None:
    labels = [1, 0, 1, 0]
    probs = [0.9, 0.3, 0.4, 0.6]
    m = ctr_metrics(labels, probs, ["u"] * 4)
    # AUC = fraction of (positive, negative) pairs with the positive scored higher:
    # (0.9, 0.3) yes, (0.9, 0.6) yes, (0.4, 0.3) yes, (0.4, 0.6) no -> 3 / 4.
    assert m["auc"] == pytest.approx(0.75)
    # LogLoss = -mean(y ln p + (1 - y) ln(1 - p)) = -(ln .9 + ln .7 + ln .4 + ln .4) / 4 = 0.573654...
    expected_logloss = -(math.log(0.9) + math.log(0.7) + math.log(0.4) + math.log(0.4)) / 4
    assert m["logloss"] == pytest.approx(expected_logloss)
    assert m["logloss"] == pytest.approx(0.5736542, abs=1e-6)
    # Threshold 0.5 predicts [1, 0, 0, 1]: samples 0 and 1 right -> 2 / 4.
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["n"] == 4
    assert m["positive_rate"] == pytest.approx(0.5)


def test_logloss_clips_certain_mistakes() -> None:
    # p = 0 for a positive would be -ln 0 = inf; clipped to 1e-7 it is -ln(1e-7).
    m = ctr_metrics([1, 0], [0.0, 0.0], [1, 1])
    assert m["logloss"] == pytest.approx((-math.log(1e-7) - math.log(1 - 1e-7)) / 2)


def test_uauc_three_users_skips_single_class_user() -> None:
    # Rows of the three users are interleaved on purpose (grouping must not rely on order).
    rows = [
        ("a", 1, 0.2), ("b", 1, 0.8), ("c", 1, 0.6), ("b", 0, 0.5),
        ("c", 0, 0.1), ("a", 1, 0.3), ("b", 0, 0.8), ("c", 1, 0.3), ("c", 0, 0.2),
    ]
    users, labels, probs = (list(col) for col in zip(*rows))
    m = ctr_metrics(labels, probs, users)
    # a: positives only -> no AUC, not counted.
    # b: pos 0.8 vs negs 0.5 (right) and 0.8 (tie, counts 1/2) -> 1.5 / 2 = 0.75.
    # c: pos {0.6, 0.3} vs negs {0.1, 0.2}: all 4 pairs right -> 1.0.
    # UAUC = unweighted mean over b and c = (0.75 + 1.0) / 2.
    assert m["uauc_users"] == 2
    assert m["uauc"] == pytest.approx(0.875)


def test_single_class_gives_nan_auc_not_crash() -> None:
    m = ctr_metrics([1, 1, 1], [0.2, 0.7, 0.9], [1, 2, 3])
    assert math.isnan(m["auc"])
    assert math.isnan(m["uauc"]) and m["uauc_users"] == 0
    # 0.2 is below the threshold -> 2 of 3 right.
    assert m["accuracy"] == pytest.approx(2 / 3)


def test_ctr_metrics_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        ctr_metrics([1, 0], [0.5], [1, 2])


def test_ndcg_at_rank_zero_one_and_miss() -> None:
    assert rank_metrics([0], ks=(1,))["ndcg@1"] == pytest.approx(1.0)
    second = rank_metrics([1], ks=(1, 3))
    assert second["ndcg@1"] == 0.0  # rank 1 is outside the top 1
    assert second["ndcg@3"] == pytest.approx(1 / math.log2(3))
    for miss in (-1, None):
        out = rank_metrics([miss], ks=(1, 20))
        assert out["ndcg@20"] == 0.0 and out["hr@20"] == 0.0


def test_rank_metrics_means_by_hand() -> None:
    m = rank_metrics([0, 2, -1, 7], ks=(1, 3, 5, 10))
    # Hits within K: K=1 {0}; K=3,5 {0, 2}; K=10 {0, 2, 7}.
    assert [m[f"hr@{k}"] for k in (1, 3, 5, 10)] == pytest.approx([0.25, 0.5, 0.5, 0.75])
    # NDCG@3 = (1/log2(2) + 1/log2(4) + 0 + 0) / 4 = (1 + 0.5) / 4.
    assert m["ndcg@3"] == pytest.approx(0.375)
    # NDCG@10 adds 1/log2(9) for rank 7.
    assert m["ndcg@10"] == pytest.approx((1 + 0.5 + 1 / math.log2(9)) / 4)


def test_hr_non_decreasing_in_k() -> None:
    ranks = np.random.default_rng(0).integers(-1, 30, size=500)
    m = rank_metrics(ranks)
    hrs = [m[f"hr@{k}"] for k in (1, 3, 5, 10, 20)]
    ndcgs = [m[f"ndcg@{k}"] for k in (1, 3, 5, 10, 20)]
    assert hrs == sorted(hrs) and ndcgs == sorted(ndcgs)
    assert all(n <= h for n, h in zip(ndcgs, hrs))


def test_recall_at_k_positions() -> None:
    topk = [[5, 3, 9], [1, 2, 3], [7, 7, 8]]
    # 9 sits at position 2; 4 is absent; 7 appears twice, the first position counts.
    assert recall_at_k(topk, [9, 4, 7]).tolist() == [2, -1, 0]


def test_interleave_beams_rank_major_dedup_cut() -> None:
    beams = [[1, 2, 3], [2, 4], [5, 1, 6, 7]]
    # Rank 1 of each beam: 1, 2, 5; rank 2: 2 (dup), 4, 1 (dup); rank 3: 3, 6; rank 4: 7.
    assert interleave_beams(beams) == [1, 2, 5, 4, 3, 6, 7]
    assert interleave_beams(beams, cut=4) == [1, 2, 5, 4]
    assert interleave_beams([], cut=5) == []
    assert interleave_beams(beams, cut=0) == []


def test_uauc_matches_per_user_sklearn_loop() -> None:
    # Cross-check of the vectorised UAUC against a plain per-user roc_auc_score loop,
    # with coarse scores so that ties occur.
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    users = rng.integers(0, 60, size=2000)
    labels = rng.integers(0, 2, size=2000)
    probs = np.round(rng.random(2000), 1)
    aucs = [
        roc_auc_score(labels[users == u], probs[users == u])
        for u in np.unique(users)
        if 0 < labels[users == u].sum() < (users == u).sum()
    ]
    m = ctr_metrics(labels, probs, users)
    assert m["uauc_users"] == len(aucs)
    assert m["uauc"] == pytest.approx(float(np.mean(aucs)), abs=1e-12)
