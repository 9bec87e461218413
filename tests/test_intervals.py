"""Bootstrap intervals over users, checked against plain reference computations written here.

References: a numpy percentile bootstrap of a mean (same generator, same seed); a cluster
bootstrap that really copies each drawn user's rows and scores the copies with sklearn /
ctr_metrics / rank_metrics; the normal-theory interval of a mean; and where the intervals
must show up (metrics JSON content, TensorBoard HParams, report.md, the environment record).
"""

from __future__ import annotations

import importlib.metadata
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from distrec.metrics.ctr_metrics import ctr_metrics
from distrec.eval.intervals import (
    CTR_NAMES,
    bootstrap_users,
    ctr_intervals,
    ctr_statistic,
    ranking_intervals,
    ranking_statistic,
    ratio_statistic,
)
from distrec.metrics.ranking_metrics import rank_metrics

SAMPLE = np.array([2.1, 3.4, 1.9, 5.6, 4.4, 0.7, 3.3, 2.8, 6.1, 4.0, 3.9, 1.2])


def test_ci_of_a_mean_equals_a_plain_numpy_percentile_bootstrap():
    """One row per user: the user bootstrap is the ordinary bootstrap of the sample mean."""
    n, b, seed = SAMPLE.size, 3000, 11
    stat = ratio_statistic(["mean"], SAMPLE, np.ones(n))
    got = bootstrap_users(stat, n_resamples=b, seed=seed)

    draws = np.random.default_rng(seed).integers(0, n, size=(b, n))  # B resamples of n indices
    means = SAMPLE[draws].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    assert got.point[0] == pytest.approx(SAMPLE.mean())
    assert got.interval("mean") == pytest.approx((low, high), rel=1e-12)
    np.testing.assert_allclose(got.distribution[0], means, rtol=1e-12)


def test_ci_of_a_mean_agrees_with_normal_theory_on_a_large_sample():
    x = np.random.default_rng(3).normal(loc=10.0, scale=2.0, size=2000)
    got = bootstrap_users(ratio_statistic(["mean"], x, np.ones(x.size)), n_resamples=2000, seed=0)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(x.size)  # 0.088 here
    low, high = got.interval("mean")
    assert low == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert high == pytest.approx(x.mean() + half, abs=0.15 * half)


def _ctr_sample(seed: int = 0, n: int = 60, n_users: int = 12):
    rng = np.random.default_rng(seed)
    users = rng.integers(100, 100 + n_users, size=n)
    labels = rng.integers(0, 2, size=n)
    probs = np.round(np.clip(0.5 + 0.25 * (labels - 0.5) + rng.normal(0, 0.25, size=n), 0.0, 1.0), 2)  # ties
    return labels, probs, users


def _copied_rows_replicates(labels, probs, users, b: int, seed: int, score) -> np.ndarray:
    """The cluster bootstrap done literally: copy every drawn user's rows, each copy a new user."""
    distinct = np.unique(users)
    draws = np.random.default_rng(seed).integers(0, distinct.size, size=(b, distinct.size))
    out = []
    for draw in draws:
        rows = [np.flatnonzero(users == distinct[j]) for j in draw]
        idx = np.concatenate(rows)
        copy_ids = np.concatenate([np.full(r.size, k) for k, r in enumerate(rows)])
        out.append(score(labels[idx], probs[idx], copy_ids))
    return np.array(out).T


def test_ctr_replicates_equal_scoring_copied_rows():
    labels, probs, users = _ctr_sample()
    b, seed = 60, 5
    got = bootstrap_users(ctr_statistic(labels, probs, users), n_resamples=b, seed=seed)

    def score(y, p, u):
        m = ctr_metrics(y, p, u)
        return [m[name] for name in CTR_NAMES]

    ref = _copied_rows_replicates(labels, probs, users, b, seed, score)
    np.testing.assert_allclose(got.distribution, ref, rtol=1e-10, atol=1e-12)
    for i, name in enumerate(CTR_NAMES):
        assert got.interval(name) == pytest.approx(tuple(np.percentile(ref[i], [2.5, 97.5])), rel=1e-10)


def test_ranking_replicates_equal_scoring_copied_rows():
    rng = np.random.default_rng(1)
    users = rng.integers(0, 9, size=50)
    ranks = rng.integers(-1, 25, size=50)
    b, seed, ks = 120, 2, (5, 20)
    got = bootstrap_users(ranking_statistic(ranks, users, ks, ("recall", "hr")), n_resamples=b, seed=seed)
    assert got.names == ("recall@5", "hr@5", "ndcg@5", "recall@20", "hr@20", "ndcg@20")

    def score(r, _p, _u):
        m = rank_metrics(r, ks=ks)
        return [m["hr@5"], m["hr@5"], m["ndcg@5"], m["hr@20"], m["hr@20"], m["ndcg@20"]]

    ref = _copied_rows_replicates(ranks, ranks, users, b, seed, score)
    np.testing.assert_allclose(got.distribution, ref, rtol=1e-12)


def test_statistics_on_the_whole_split_equal_the_point_metrics():
    labels, probs, users = _ctr_sample(seed=4, n=200, n_users=30)
    point = dict(zip(CTR_NAMES, ctr_statistic(labels, probs, users).point()))
    expected = ctr_metrics(labels, probs, users)
    for name in CTR_NAMES:
        assert point[name] == pytest.approx(expected[name], rel=1e-12), name
    assert point["auc"] == pytest.approx(roc_auc_score(labels, probs))
    ranks = np.random.default_rng(0).integers(-1, 30, size=200)
    rank_point = dict(zip(("hr@10", "ndcg@10"), ranking_statistic(ranks, users, (10,)).point()))
    for name, value in rank_metrics(ranks, ks=(10,)).items():
        assert rank_point[name] == pytest.approx(value, rel=1e-12)


def test_summary_shape_seeded_and_reproducible():
    labels, probs, users = _ctr_sample()
    first = ctr_intervals(labels, probs, users, n_resamples=200, seed=9)
    assert first == ctr_intervals(labels, probs, users, n_resamples=200, seed=9)
    assert first != ctr_intervals(labels, probs, users, n_resamples=200, seed=10)
    assert set(first["ci"]) == set(CTR_NAMES)
    assert first["bootstrap"] == {"unit": "user", "users": 12, "resamples": 200, "seed": 9, "level": 0.95,
                                  "method": "percentile"}
    point = ctr_metrics(labels, probs, users)
    for name, (low, high) in first["ci"].items():
        assert low <= point[name] <= high, name


def test_one_user_or_a_missing_class_gives_nan_bounds_not_an_error():
    one = ranking_intervals([0, 3, -1], [7, 7, 7], (5,), n_resamples=50)
    assert all(math.isnan(v) for pair in one["ci"].values() for v in pair)
    only_positives = ctr_intervals([1, 1, 1, 1], [0.2, 0.4, 0.6, 0.8], [1, 2, 3, 4], n_resamples=50)
    assert all(math.isnan(v) for v in only_positives["ci"]["auc"])
    assert all(0.0 <= v <= 1.0 for v in only_positives["ci"]["accuracy"])


def test_hparams_record_both_bounds_of_an_interval(tmp_path):
    from distrec.train.monitor import Monitor
    from distrec.eval.tensorboard import read_scalars

    with Monitor(tmp_path / "tb") as monitor:
        monitor.hparams({"train.lr": 0.001}, {"test_auc": 0.61, "test_ci": {"auc": [0.55, 0.67]}})
    scalars = read_scalars(tmp_path / "tb")
    assert scalars["hparams/test_auc"][0][1] == pytest.approx(0.61)
    assert scalars["hparams/test_ci.auc.low"][0][1] == pytest.approx(0.55)
    assert scalars["hparams/test_ci.auc.high"][0][1] == pytest.approx(0.67)


def _summary() -> dict:
    """What the launcher hands the report: metrics_<mode>.json flattened one level with dots."""
    return {
        "test.auc": 0.6123456, "test.logloss": 0.66, "test.n": 1000,
        "test.ci": {"auc": [0.58, 0.64], "logloss": [0.65, 0.67]},
        "test.bootstrap": {"unit": "user", "users": 59, "resamples": 2000, "seed": 0, "level": 0.95,
                           "method": "percentile"},
        "environment.cpu_model": "Test CPU 9000", "environment.torch_threads": 2,
        "environment.libraries": {"torch": "2.13.0"}, "environment.config_hash": "0123456789abcdef",
        "wall_time_s": 12.5,
    }


def test_report_has_a_ci_column_and_the_environment(tmp_path):
    from distrec.eval.report import format_summary, write_report
    from distrec.train.monitor import Monitor

    with Monitor(tmp_path / "tb") as monitor:
        monitor.scalars(1, {"train/loss": 1.0})
    text = write_report(tmp_path, tmp_path / "tb", _summary(), {}).read_text()
    metrics = text.split("## Metrics")[1].split("## Curves")[0]
    assert "| metric | value | 95 % CI |" in metrics
    assert "| test.auc | 0.6123 | [0.5800, 0.6400] |" in metrics
    assert "| test.n | 1000 |  |" in metrics
    assert not [line for line in metrics.splitlines() if line.startswith(("| test.ci", "| test.bootstrap", "| env"))]
    assert "percentile bootstrap over users: 2000 replicates, seed 0, 59 users" in metrics
    env = text.split("## Environment")[1].split("## ")[0]
    for row in ("| cpu_model | Test CPU 9000 |", "| torch_threads | 2 |", "| libraries.torch | 2.13.0 |",
                "| config_hash | 0123456789abcdef |"):
        assert row in env, row
    printed = format_summary(_summary(), {"tensorboard": tmp_path / "tb"})
    assert "test.auc" in printed and "0.6123 [0.5800, 0.6400]" in printed and "Test CPU" not in printed


def test_environment_names_this_host_and_hashes_the_config_without_run_names():
    from distrec.eval.environment import config_hash, run_environment
    from distrec.eval.environment import cpu_model

    config = {"train": {"lr": 0.001, "seed": 42}, "ray": {"run_name": "a", "storage_path": "/x", "num_workers": 2}}
    renamed = {"train": {"seed": 42, "lr": 0.001}, "ray": {"num_workers": 2, "run_name": "b", "storage_path": "/y"}}
    changed = {"train": {"lr": 0.002, "seed": 42}, "ray": {"run_name": "a", "storage_path": "/x", "num_workers": 2}}
    assert config_hash(config) == config_hash(renamed) != config_hash(changed)
    assert len(config_hash(config)) == 16
    env = run_environment(config)
    import torch

    assert env["cpu_model"] == cpu_model() and env["torch_threads"] == torch.get_num_threads()
    assert env["libraries"]["numpy"] == importlib.metadata.version("numpy") == np.__version__
    assert env["libraries"]["scipy"] == importlib.metadata.version("scipy")
    assert env["config_hash"] == config_hash(config)


def _scored_rows_context(tmp_path, forwards: list[int] | None = None):
    """``train/loop.py``'s context around CtrTask's metrics, scoring each row by its ``p`` column
    instead of a model; ``forwards`` counts the rows scored."""
    from distrec.config import JobConfig
    from distrec.objectives.tasks import CtrTask
    from distrec.predict.run_model import OneProcess as OneRank
    from distrec.train import loop
    from distrec.train.monitor import Monitor

    class Task:
        metrics = staticmethod(CtrTask.metrics)
        eval_columns = CtrTask.eval_columns

        def eval_rows(self, engine, batch, n_real):
            if forwards is not None:
                forwards.append(n_real)
            return [(int(batch["sample_id"][i]), int(batch["user_id"][i]), int(batch["label"][i]), float(batch["p"][i]))
                    for i in range(n_real)]

    class Engine:
        def eval(self):
            pass

    return loop._Context(JobConfig(), OneRank(), Engine(), Task(), Monitor(tmp_path / "tb", enabled=False), tmp_path)


def test_final_evaluation_of_a_ctr_split_carries_intervals_and_saves_its_rows(tmp_path):
    """``train/loop.py``'s evaluation with CtrTask's metrics; scores come from the rows, not a model."""
    import pyarrow.parquet as pq

    from distrec.train import loop

    labels, probs, users = _ctr_sample(n=40)
    rows = {"sample_id": np.arange(40), "user_id": users, "label": labels, "p": probs}
    ctx = _scored_rows_context(tmp_path)
    during_training = loop._evaluate(ctx, rows, "valid", write=False)
    assert "ci" not in during_training and not (tmp_path / "predictions_valid.parquet").exists()
    final = loop._evaluate(ctx, rows, "test", write=True)
    expected = ctr_intervals(labels, probs.astype(np.float32), users)  # the file keeps P(yes) as float32
    assert final["ci"] == expected["ci"] and final["bootstrap"] == expected["bootstrap"]
    assert final["auc"] == pytest.approx(roc_auc_score(labels, probs.astype(np.float32)))
    saved = pq.read_table(tmp_path / "predictions_test.parquet").to_pandas()
    assert saved["sample_id"].tolist() == list(range(40)) and saved["user_id"].tolist() == users.tolist()


def test_the_final_validation_of_unchanged_weights_reuses_the_last_predictions(tmp_path):
    """When the weights have not changed since the last validation (``reuse``), the final
    evaluation scores no row again, yet writes the same file and the same metrics (intervals
    included) as a second forward over the rows."""
    import pyarrow.parquet as pq

    from distrec.train import loop

    labels, probs, users = _ctr_sample(n=40)
    rows = {"sample_id": np.arange(40), "user_id": users, "label": labels, "p": probs}
    forwards: list[int] = []
    ctx = _scored_rows_context(tmp_path, forwards)
    during_training = loop._evaluate(ctx, rows, "valid", write=False, step=7)
    assert sum(forwards) == 40 and ctx.valid_predictions[0] == 7
    reused = loop._evaluate(ctx, rows, "valid", write=True, reuse=True)
    assert sum(forwards) == 40  # no row scored a second time
    kept = pq.read_table(tmp_path / "predictions_valid.parquet").to_pandas()
    again = loop._evaluate(ctx, rows, "valid", write=True)
    assert sum(forwards) == 80
    assert reused == again and reused["auc"] == during_training["auc"]
    assert reused["auc"] == pytest.approx(roc_auc_score(labels, probs.astype(np.float32)))
    assert kept.equals(pq.read_table(tmp_path / "predictions_valid.parquet").to_pandas())
