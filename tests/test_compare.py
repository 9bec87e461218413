"""`distrec compare`: DeLong's test by hand and against a plain O(n²) version, the paired bootstrap
against literally copied rows, identical runs (Δ = 0, p = 1), runs that scored different rows
(a named error), and the per-row results that CTR, generative and EIMF runs now save.

Run folders are built by writing the files a run writes (``predictions_test.parquet``), not by
training.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from distrec.data.storage import write_parquet_file
from distrec.errors import DataError
from distrec.eval.compare import compare_runs, delong, load_predictions, ranking_predictions
from distrec.metrics.ctr_metrics import ctr_metrics
from distrec.metrics.ranking_metrics import rank_metrics

# ------------------------------------------------------------------------------------ DeLong


def test_delong_hand_computed_case():
    """3 positives, 3 negatives. ψ(X, Y) = 1, 1/2, 0 for X >, =, < Y.

    A: X = .9 .6 .4, Y = .7 .4 .2 -> V10 = 1, 2/3, 1/2; V01 = 1/3, 5/6, 1; AUC 13/18.
    B: X = .8 .7 .5, Y = .6 .1 .3 -> V10 = 1, 1, 2/3;   V01 = 2/3, 1, 1;   AUC 16/18.
    D10 = V10_B − V10_A = 0, 1/3, 1/6 and D01 = 1/3, 1/6, 0: sample variances 1/36 each, so
    Var(Δ) = (1/36)/3 + (1/36)/3 = 1/54, Δ = 1/6, z = (1/6)·√54 = √1.5.
    """
    labels = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([0.9, 0.6, 0.4, 0.7, 0.4, 0.2])
    b = np.array([0.8, 0.7, 0.5, 0.6, 0.1, 0.3])
    got = delong(labels, a, b)
    assert got.auc_a == pytest.approx(13 / 18) and got.auc_b == pytest.approx(16 / 18)
    assert got.variance == pytest.approx(1 / 54)
    assert got.z == pytest.approx(math.sqrt(1.5))
    assert got.p == pytest.approx(2 * norm.sf(math.sqrt(1.5)))  # 0.2207


def _delong_quadratic(labels, a, b):
    """DeLong et al. (1988) straight from the definition: every positive against every negative."""
    pos, neg = labels == 1, labels == 0
    comps = []
    for s in (a, b):
        x, y = s[pos][:, None], s[neg][None, :]
        psi = (x > y) + 0.5 * (x == y)
        comps.append((psi.mean(axis=1), psi.mean(axis=0), psi.mean()))
    (v10a, v01a, auc_a), (v10b, v01b, auc_b) = comps
    m, n = pos.sum(), neg.sum()
    s10 = np.cov(v10a, v10b)
    s01 = np.cov(v01a, v01b)
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    return auc_a, auc_b, var


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_the_quadratic_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=300)
    a = np.round(labels * 0.3 + rng.normal(size=300), 1)  # rounding makes many ties
    b = np.round(labels * 0.5 + rng.normal(size=300), 1)
    auc_a, auc_b, var = _delong_quadratic(labels, a, b)
    got = delong(labels, a, b)
    assert got.auc_a == pytest.approx(auc_a, rel=1e-12) == roc_auc_score(labels, a)
    assert got.auc_b == pytest.approx(auc_b, rel=1e-12)
    assert got.variance == pytest.approx(var, rel=1e-10)
    assert got.p == pytest.approx(2 * norm.sf(abs(auc_b - auc_a) / math.sqrt(var)), rel=1e-10)


def test_delong_identical_scores_give_p_one():
    labels = np.array([1, 0, 1, 0, 1])
    s = np.array([0.3, 0.2, 0.9, 0.5, 0.5])
    got = delong(labels, s, s)
    assert got.variance == 0.0 and got.z == 0.0 and got.p == 1.0


# ------------------------------------------------------------------------------ run folders


def _ctr_columns(seed: int, n: int = 80, n_users: int = 15, skill: float = 0.3):
    rng = np.random.default_rng(seed)
    labels = np.random.default_rng(100).integers(0, 2, size=n)  # the same data in every run
    users = np.random.default_rng(101).integers(1, 1 + n_users, size=n)
    p = np.clip(0.5 + skill * (labels - 0.5) + rng.normal(0, 0.25, size=n), 0.01, 0.99)
    return {"sample_id": np.arange(1000, 1000 + n, dtype=np.int64), "user_id": users.astype(np.int64),
            "label": labels.astype(np.int8), "p_yes": p.astype(np.float32)}


def _ctr_run(folder, columns) -> None:
    """What ``train/loop.py`` writes for a CTR run: ``<run>/distrec/predictions_test.parquet``."""
    write_parquet_file(pa.table(columns), folder / "distrec" / "predictions_test.parquet")


def test_identical_ctr_runs_differ_by_zero_with_p_one(tmp_path):
    cols = _ctr_columns(0)
    _ctr_run(tmp_path / "a", cols)
    _ctr_run(tmp_path / "b", cols)
    result = compare_runs(tmp_path / "a", tmp_path / "b", n_resamples=300)
    assert [m.name for m in result.metrics] == ["auc", "uauc", "logloss", "accuracy"]
    for m in result.metrics:
        assert m.delta == 0.0 and m.delta_ci == (0.0, 0.0) and m.p_bootstrap == 1.0, m.name
        assert m.a == m.b and m.a_ci == m.b_ci
    assert result.metric("auc").p_delong == 1.0
    expected = ctr_metrics(cols["label"], cols["p_yes"], cols["user_id"])
    assert result.metric("auc").a == pytest.approx(expected["auc"])
    assert result.metric("uauc").a == pytest.approx(expected["uauc"])
    assert result.n_rows == 80 and result.n_users == len(np.unique(cols["user_id"]))
    assert "| AUC |" in result.markdown() and "+0.0000 [+0.0000, +0.0000] | 1.0000 | 1.0000 |" in result.markdown()


def test_identical_ranking_runs_differ_by_zero_with_p_one(tmp_path):
    rng = np.random.default_rng(0)
    ranks = rng.integers(-1, 20, size=40)
    table = ranking_predictions(np.arange(40), rng.integers(0, 8, size=40), rng.integers(0, 99, size=40), ranks,
                                ks=(5, 10), hit_names=("recall", "hr"))
    for name in ("a", "b"):
        write_parquet_file(table, tmp_path / name / "predictions_test.parquet")
    result = compare_runs(tmp_path / "a", tmp_path / "b", n_resamples=200)
    assert [m.name for m in result.metrics] == ["recall@5", "hr@5", "ndcg@5", "recall@10", "hr@10", "ndcg@10"]
    assert all(m.delta == 0.0 and m.p_bootstrap == 1.0 and math.isnan(m.p_delong) for m in result.metrics)
    assert result.metric("ndcg@10").a == pytest.approx(rank_metrics(ranks, ks=(10,))["ndcg@10"])


def test_paired_replicates_equal_scoring_copied_rows_of_both_runs(tmp_path):
    a, b = _ctr_columns(1, skill=0.2), _ctr_columns(2, skill=0.4)
    _ctr_run(tmp_path / "a", a)
    _ctr_run(tmp_path / "b", b)
    reps, seed = 60, 4
    result = compare_runs(tmp_path / "a", tmp_path / "b", n_resamples=reps, seed=seed)

    users = a["user_id"]
    distinct = np.unique(users)
    deltas = {"auc": [], "logloss": []}
    for draw in np.random.default_rng(seed).integers(0, distinct.size, size=(reps, distinct.size)):
        idx = np.concatenate([np.flatnonzero(users == distinct[j]) for j in draw])
        for name, fn in (("auc", roc_auc_score), ("logloss", lambda y, p: ctr_metrics(y, p, y)["logloss"])):
            deltas[name].append(fn(b["label"][idx], b["p_yes"][idx]) - fn(a["label"][idx], a["p_yes"][idx]))
    for name, values in deltas.items():
        m = result.metric(name)
        low, high = np.percentile(values, [2.5, 97.5])
        assert m.delta_ci == pytest.approx((low, high), rel=1e-6, abs=1e-9), name
        d = m.delta
        assert m.p_bootstrap == pytest.approx((1 + np.sum(np.abs(np.array(values) - d) >= abs(d))) / (1 + reps))
    auc = result.metric("auc")
    assert auc.delta == pytest.approx(roc_auc_score(b["label"], b["p_yes"]) - roc_auc_score(a["label"], a["p_yes"]))
    assert auc.p_delong == pytest.approx(delong(a["label"], a["p_yes"], b["p_yes"]).p)


def test_a_much_better_run_is_significant(tmp_path):
    a = _ctr_columns(3, n=400, n_users=60, skill=0.0)
    b = dict(a, p_yes=np.where(a["label"] == 1, 0.8, 0.2).astype(np.float32))  # B ranks perfectly
    _ctr_run(tmp_path / "a", a)
    _ctr_run(tmp_path / "b", b)
    auc = compare_runs(tmp_path / "a", tmp_path / "b", n_resamples=500).metric("auc")
    assert auc.delta > 0.3 and auc.delta_ci[0] > 0 and auc.p_bootstrap < 0.01 and auc.p_delong < 1e-6


def test_runs_that_scored_different_rows_are_refused_by_name(tmp_path):
    cols = _ctr_columns(0)
    _ctr_run(tmp_path / "a", cols)
    other = {k: np.concatenate([v[:1], v[2:], v[:1]]) for k, v in cols.items()}  # without 1001 ...
    other["sample_id"][-1] = 5000  # ... and with a row A never scored
    _ctr_run(tmp_path / "b", other)
    with pytest.raises(DataError, match=r"different rows: 1 sample_id only in \S*/a/distrec/predictions_test.parquet: "
                                        r"1001; 1 sample_id only in \S*/b/distrec/predictions_test.parquet: 5000"):
        compare_runs(tmp_path / "a", tmp_path / "b")

    relabelled = dict(cols, label=cols["label"].copy())
    relabelled["label"][[3, 7]] = 1 - relabelled["label"][[3, 7]]
    _ctr_run(tmp_path / "c", relabelled)
    with pytest.raises(DataError, match=r"label differs .* at sample_id 1003, 1007"):
        compare_runs(tmp_path / "a", tmp_path / "c")

    write_parquet_file(ranking_predictions([1], [1], [1], [0], ks=(5,)), tmp_path / "r" / "predictions_test.parquet")
    with pytest.raises(DataError, match="is a ctr run and .* a ranking run"):
        compare_runs(tmp_path / "a", tmp_path / "r")
    with pytest.raises(DataError, match="no per-row results for split 'valid'"):
        compare_runs(tmp_path / "a", tmp_path / "b", split="valid")


def test_a_nan_score_in_a_predictions_file_is_refused_by_sample_id(tmp_path):
    cols = _ctr_columns(0)
    _ctr_run(tmp_path / "a", cols)
    broken = dict(cols, p_yes=cols["p_yes"].copy())
    broken["p_yes"][[4, 9]] = [np.nan, np.inf]
    _ctr_run(tmp_path / "b", broken)
    with pytest.raises(DataError, match=r"b/distrec/predictions_test.parquet: p_yes is missing or not finite "
                                        r"at sample_id 1004, 1009"):
        compare_runs(tmp_path / "a", tmp_path / "b")


def test_cli_prints_the_table_and_refuses_different_rows(tmp_path):
    from distrec.cli import app

    cols = _ctr_columns(0)
    _ctr_run(tmp_path / "a", cols)
    _ctr_run(tmp_path / "b", _ctr_columns(5))
    done = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "200"])
    assert done.exit_code == 0, done.output
    assert "| metric | A [95 % CI] | B [95 % CI] | Δ = B − A [95 % CI] | p (paired bootstrap) | p (DeLong) |" in done.stdout
    assert "200 replicates, seed 0" in done.stdout
    _ctr_run(tmp_path / "c", {k: v[:-1] for k, v in cols.items()})
    refused = CliRunner().invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "c")])
    assert refused.exit_code == 2 and "sample_id only in" in refused.output and "1079" in refused.output


# ------------------------------------------------------------------ per-row results of runs


def test_eimf_evaluation_saves_rows_that_reproduce_its_metrics(tmp_path):
    import torch
    from eimf_toy import toy_items, toy_samples

    from distrec.config.eimf import BackboneConfig, EimfConfig, EimfEvalConfig
    from distrec.interests.evaluate import evaluate_retrieval
    from distrec.model.interests.eimf import build_model

    items, samples = toy_items(48), toy_samples(20, 48)
    cfg = EimfConfig(backbone=BackboneConfig(kind="sa", num_interests=4, dim=16, max_len=10))
    results = []
    for seed, stage in ((0, "ibim"), (1, "eimf")):
        torch.manual_seed(seed)
        out = evaluate_retrieval(build_model(48, cfg), samples, items, EimfEvalConfig(ks=[5, 20]), return_rows=True)
        write_parquet_file(out.pop("rows"), tmp_path / stage / "predictions_test.parquet")
        results.append(out)
    rows = load_predictions(tmp_path / "ibim")
    assert rows.kind == "ranking" and rows.ks == (5, 20) and rows.hit_names == ("recall", "hr")
    assert rows.frame["sample_id"].tolist() == sorted(samples.column("sample_id").to_pylist())
    again = rank_metrics(rows.frame["rank"].to_numpy(), ks=(5, 20))
    assert again["hr@20"] == pytest.approx(results[0]["recall@20"]) and again["ndcg@5"] == pytest.approx(results[0]["ndcg@5"])
    low, high = results[0]["ci"]["recall@20"]
    assert low <= results[0]["recall@20"] <= high and results[0]["bootstrap"]["users"] == 20

    result = compare_runs(tmp_path / "ibim", tmp_path / "eimf", n_resamples=200)
    assert result.metric("recall@20").delta == pytest.approx(results[1]["recall@20"] - results[0]["recall@20"])
    assert result.metric("ndcg@5").b == pytest.approx(results[1]["ndcg@5"])


def _objects(lists: list) -> np.ndarray:
    """A 1-d object array of lists, as the tokenised rows hold them."""
    out = np.empty(len(lists), dtype=object)
    out[:] = lists
    return out


class _ThreadRanks:
    """A fake Ray Train rank: ``all_gather_object`` across threads (no torch.distributed)."""

    def __init__(self, rank: int, world: int, board: list, barrier: threading.Barrier):
        self.rank, self.world_size, self._board, self._barrier = rank, world, board, barrier

    def all_gather_object(self, obj):
        self._board[self.rank] = obj
        self._barrier.wait()
        out = list(self._board)
        self._barrier.wait()
        return out


def test_grounded_ranks_come_back_in_row_order_from_two_ranks(monkeypatch):
    """Rows are dealt round-robin to 2 ranks; the per-row ranks must return in the split's order.

    Stand-ins: the "model" generates, for row i, the title of its own target when i % 3 == 0 and
    of another item otherwise; a title's vector is its one-hot, so grounding puts the generated
    item first (rank 0 exactly when it is the target)."""
    from distrec.eval import generation

    titles = {10 + j: f"title {j}" for j in range(6)}
    one_hot = {t: np.eye(len(titles), dtype=np.float32)[j] for j, t in enumerate(titles.values())}
    n = 11
    targets = np.array([10 + (i % 6) for i in range(n)])
    wrong = {i: titles[10 + (i + 1) % 6] for i in range(n)}

    class Tok:
        def decode(self, ids, skip_special_tokens=False):
            return str(ids[0])

    def fake_states(model, tokenizer, texts, batch_size=8, add_special_tokens=False):
        return np.stack([one_hot[t] for t in texts]) if texts else np.zeros((0, len(titles)), np.float32)

    def fake_beams(model, tokenizer, prompts, num_beams, **kwargs):
        return [[titles[int(targets[int(p)])] if int(p) % 3 == 0 else wrong[int(p)]] * num_beams for p in prompts]

    monkeypatch.setattr(generation, "last_token_states", fake_states)
    monkeypatch.setattr(generation, "generate_beams", fake_beams)
    rows = {"sample_id": np.arange(100, 100 + n), "user_id": np.arange(n) % 4, "item_id": targets,
            "input_ids": _objects([[i] for i in range(n)]), "labels": _objects([[-100]] * n)}
    board, barrier, out = [None, None], threading.Barrier(2), [None, None]

    def run(rank):
        out[rank] = generation.grounded_metrics(None, Tok(), _ThreadRanks(rank, 2, board, barrier), rows, titles,
                                                num_beams=2, ks=(1, 5))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    metrics, _, ranks, _ = out[0]
    assert np.array_equal(out[1][2], ranks)
    assert ranks.shape == (n,) and [i for i in range(n) if ranks[i] == 0] == [0, 3, 6, 9]
    assert metrics["hr@1"] == pytest.approx(4 / n) and metrics["n"] == n


# ------------------------------------------------------------------ experiment-table glue


def test_eimf_seed_script_pairs_each_seed_and_names_folders_without_rows(tmp_path):
    from bench_scripts import load_bench

    eimf_seeds = load_bench("eimf_seeds", "experiments")
    rng = np.random.default_rng(0)
    ranks = rng.integers(-1, 60, size=50)
    same = ranking_predictions(np.arange(50), rng.integers(0, 9, size=50), np.arange(50), ranks, ks=(20, 50),
                               hit_names=("recall", "hr"))
    better = ranking_predictions(np.arange(50), same.column("user_id").to_numpy(), np.arange(50),
                                 np.where(ranks > 0, ranks - 1, ranks), ks=(20, 50), hit_names=("recall", "hr"))
    for seed, eimf in ((42, same), (44, better)):
        write_parquet_file(same, tmp_path / f"seed{seed}" / "ibim" / "predictions_test.parquet")
        write_parquet_file(eimf, tmp_path / f"seed{seed}" / "eimf" / "predictions_test.parquet")
    (tmp_path / "seed43" / "ibim").mkdir(parents=True)  # a seed run before per-row results existed

    text = eimf_seeds.paired(tmp_path, [42, 43, 44], n_resamples=100)
    lines = text.splitlines()
    assert lines[0].startswith("| row vs baseline | seed | ΔRecall@20 [95 % CI] | p | ΔNDCG@20 [95 % CI] | p |")
    assert lines[2].startswith("| IBIM + ESIM vs IBIM alone | 42 | +0.0000 [+0.0000, +0.0000] | 1.0000 |")
    expected = compare_runs(tmp_path / "seed44" / "ibim", tmp_path / "seed44" / "eimf", n_resamples=100)
    m = expected.metric("ndcg@20")
    assert f"| {m.delta:+.4f} [{m.delta_ci[0]:+.4f}, {m.delta_ci[1]:+.4f}] |" in lines[3]
    assert m.delta > 0
    assert "No per-row results (run before issue 19) for seeds [43]" in text
    assert any(line.startswith("- ΔRecall@20: ") and "of 2 paired differences" in line for line in lines)


def test_seed_tables_and_run_names_by_hand(tmp_path):
    from bench_scripts import load_bench

    paired_tables = load_bench("paired_tables", "experiments")
    table_runs = load_bench("table_runs", "experiments")
    metrics = {("r", 1): {"auc": 0.6, "ci": {"auc": [0.55, 0.65]}}, ("r", 2): {"auc": 0.7, "ci": {"auc": [0.6, 0.8]}}}
    text = paired_tables.seeds_table(["r"], [1, 2], lambda row, seed: metrics[(row, seed)], ["auc"], ["AUC"])
    # mean 0.65, sd sqrt(((0.05)^2 * 2) / 1) = 0.0707; half-widths 0.05 and 0.10 -> 0.075
    assert text.splitlines()[-1] == "| r | 0.6500 ± 0.0707 (±0.0750) |"
    assert paired_tables.with_ci(metrics[("r", 1)], "auc") == "0.6000 [0.5500, 0.6500]"
    assert paired_tables.with_ci({"auc": 0.6}, "auc") == "0.6000"

    assert table_runs.parse_seeds(None) == [None] and table_runs.parse_seeds("42,43") == [42, 43]
    with pytest.raises(SystemExit, match="repeats a seed"):
        table_runs.parse_seeds("42,42")
    config = tmp_path / "job.yaml"
    config.write_text("train:\n  lr: 0.001\n")
    name = table_runs.run_name("t", str(config), ["a=1"], ["b=2"], 42)
    assert name == table_runs.run_name("t", str(config), ["a=1"], ["b=2"], 42)
    assert name != table_runs.run_name("t", str(config), ["a=1"], ["b=2"], 43)
    config.write_text("train:\n  lr: 0.002\n")
    assert name != table_runs.run_name("t", str(config), ["a=1"], ["b=2"], 42)


def _finished_ctr_run(folder, skill: float, seed: int):
    """A finished CTR run as run_job returns it, with the per-row file the loop writes."""
    from distrec.train.launcher import RunResult

    cols = _ctr_columns(seed, n=60, n_users=12, skill=skill)
    _ctr_run(folder, cols)
    metrics = ctr_metrics(cols["label"], cols["p_yes"], cols["user_id"])
    return RunResult(run_dir=folder / "distrec", metrics={"test": metrics}, report=None, elapsed_s=10.0)


def test_rellax_script_tables_from_finished_runs(tmp_path, monkeypatch):
    """The table-making half of rellax_ablation.py (training replaced by finished run folders)."""
    from bench_scripts import load_bench

    rellax = load_bench("rellax_ablation", "experiments")
    import table_runs  # the sibling module rellax_ablation's main imports

    def fake_grid(config, overrides, rows, seeds, prefix):
        return {(row, seed): _finished_ctr_run(tmp_path / "runs" / f"{prefix}-{i}-{seed}", 0.1 * i, seed)
                for seed in seeds for i, row in enumerate(rows)}

    def fake_din(config, overrides, seed):
        run = _finished_ctr_run(tmp_path / "runs" / "din", 0.5, 0)
        return run.run_dir, run.metrics["test"], 3.0

    monkeypatch.setattr(table_runs, "run_grid", fake_grid)
    monkeypatch.setattr(rellax, "din_run", fake_din)
    text = rellax.main(["--seeds", "42,43", "--resamples", "50"])
    assert (tmp_path / "runs" / "rellax_ablation.md").read_text().endswith(text + "\n")
    lines = text.splitlines()
    assert sum(line.startswith("| DIN (CRM") for line in lines) == 2  # listed once, and in the seed table
    assert any(line.startswith("| row | AUC: mean ± sd over 2 seeds (one run's CI ±) | LogLoss: ") for line in lines)
    pairs = [line for line in lines if " vs " in line and line.startswith("| ") and not line.startswith("| row")]
    assert len(pairs) == 4 * 2  # 3 ablation steps + ReLLaX vs DIN, per seed
    assert any(line.startswith("| + CFLoRA (ReLLaX) vs DIN (CRM, full train split) | 43 |") for line in pairs)
    assert any(line.startswith("- ΔAUC: ") and "of 8 paired differences" in line for line in lines)


def test_cft_script_tables_from_finished_runs(tmp_path, monkeypatch):
    from bench_scripts import load_bench
    from distrec.train.launcher import RunResult

    cft = load_bench("cft_vs_sft", "experiments")
    import table_runs

    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 10, size=40), rng.integers(0, 99, size=40)

    def fake_grid(config, overrides, rows, seeds, prefix):
        out = {}
        for seed in seeds:
            for i, row in enumerate(rows):
                same_as_sft = i in (0, 3)  # the λ = 0, β = 1 row reproduces SFT exactly
                ranks = np.random.default_rng(seed * 10 + (0 if same_as_sft else i)).integers(-1, 30, size=40)
                folder = tmp_path / "runs" / f"{prefix}-{i}-{seed}" / "distrec"
                write_parquet_file(ranking_predictions(np.arange(40), users, items, ranks, ks=(1, 5, 10, 20)),
                                   folder / "predictions_test.parquet")
                out[(row, seed)] = RunResult(folder, {"test": {**rank_metrics(ranks, ks=(1, 5, 10, 20)), "loss": 2.0}},
                                             None, 5.0)
        return out

    monkeypatch.setattr(table_runs, "run_grid", fake_grid)
    text = cft.main(["--seeds", "1,2", "--resamples", "50"])
    pairs = [line for line in text.splitlines() if " vs SFT | " in line]
    assert len(pairs) == 3 * 2
    for seed in (1, 2):
        assert f"| λ=0, β=1 (= SFT) vs SFT | {seed} | +0.0000 [+0.0000, +0.0000] | 1.0000 |" in text
    assert "- λ=0, β=1 (= SFT) vs SFT: ΔHR@10 +0.0000 ± 0.0000 (interval excludes 0 in 0 of 2 seeds)" in text
    assert (tmp_path / "runs" / "cft_vs_sft.md").is_file()
