"""``distrec predict`` for EIMF runs (distrec.predict.eimf) on a real toy run.

The run: a ``custom`` dataset (users with several same-second interactions, so the
``(timestamp, item_id)`` tie-break matters) prepared by ``prepare`` and trained by
``run_train`` (``distrec eimf train``: Ray Train, then the test evaluation that writes
``predictions_test.parquet``), with ``eval.exclude_history`` on and ``data.max_history`` (8)
above ``backbone.max_len`` (5) so both caps apply.

Truths: the run's own saved per-row test ranks; the test split's stored histories; a
brute-force numpy max-over-interests ranking over a history rebuilt here from the raw
interaction log; the data on disk for bad rows.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distrec.config import DataConfig, RayConfig
from distrec.errors import ConfigError, DataError
from distrec.config.eimf import (
    BackboneConfig,
    EimfConfig,
    EimfEvalConfig,
    EimfTrainConfig,
    RecLossConfig,
)
from distrec.predict.eimf import EimfScorer, eimf_spec, is_eimf_run, run_prepared
from distrec.predict.pipeline import MANIFEST, PredictOptions, run_predict

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_thread")]

N_USERS, N_ITEMS, PER_USER = 24, 40, 14
MAX_HISTORY, MAX_LEN, KS, TOP_N = 8, 5, [5, 10], 15


def _write_custom(folder: Path) -> None:
    """Users draw mostly from genre u mod 4; timestamps advance by 0, 0, 1 or 7 s, so many
    interactions share a second with the user's previous one."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True)
    rows = []
    for u in range(N_USERS):
        genre = np.arange(u % 4, N_ITEMS, 4)
        pool = np.r_[genre, rng.choice(np.setdiff1d(np.arange(N_ITEMS), genre), 6, replace=False)]
        items = rng.choice(pool, PER_USER, replace=False)
        ts = 1000 + int(rng.integers(0, 20)) + np.cumsum(rng.choice([0, 0, 1, 7], PER_USER))
        rows += [{"user_id": 500 + u, "item_id": 100 + int(i), "timestamp": int(t), "rating": 4.0}
                 for i, t in zip(items, ts)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "interactions.parquet")
    pq.write_table(pa.table({"item_id": pa.array(range(100, 100 + N_ITEMS), pa.int64()),
                             "title": [f"Movie {i}" for i in range(N_ITEMS)],
                             "categories": [["Action", "Drama", "Comedy", "Horror"][i % 4] for i in range(N_ITEMS)]}),
                   folder / "items.parquet")


@pytest.fixture(scope="module")
def toy_run(ray_local, tmp_path_factory):
    """``(run folder, prepared folder)`` of one ``run_train`` on the toy custom dataset."""
    from distrec.config import JobConfig, ModelConfig
    from distrec.interests.pipeline import run_train

    root = tmp_path_factory.mktemp("eimf-predict")
    _write_custom(root / "raw")
    data = DataConfig(dataset="custom", task="generative", raw_path=str(root / "raw"),
                      prepared_dir=str(root / "prepared"),
                      max_history=MAX_HISTORY, num_shards=1)
    cfg = EimfConfig(
        backbone=BackboneConfig(kind="sa", num_interests=3, dim=16, max_len=MAX_LEN),
        loss=RecLossConfig(sampler="full"),
        train=EimfTrainConfig(batch_size=32, epochs=2, seed=5, device="cpu", lr=1e-2),
        eval=EimfEvalConfig(ks=KS, exclude_history=True),
        out_dir=str(root / "out"),
    )
    job = JobConfig(data=data, model=ModelConfig(kind="eimf"), eimf=cfg,
                    ray=RayConfig(num_workers=1, storage_path=str(root / "ray")))
    report = run_train(job)
    return Path(report["artefact"]), root / "prepared"


@pytest.fixture(scope="module")
def test_split(toy_run) -> pa.Table:
    from distrec.data.storage import open_split

    return open_split(toy_run[1], "test")


def _spec(run, table: pa.Table, prepared=None, top_n=TOP_N, batch_size=7):
    return eimf_spec(str(run), table.schema, top_n, batch_size, use_gpu=False, prepared=prepared)


def _predict(spec, src: Path, out: Path, **opts):
    return run_predict(spec, str(src), str(out), PredictOptions(progress=False, chunk_rows=16, **opts), {"run": "toy"})


def _read_out(out: Path) -> pa.Table:
    manifest = json.loads((out / MANIFEST).read_text())
    return pa.concat_tables([pq.read_table(out / f["path"]) for f in manifest["files"]])


def _rank_in(top: list[int], target: int) -> int:
    return top.index(target) if target in top else -1


# ----------------------------------------------------------------------------- parity


def test_parity_with_the_runs_saved_test_ranks(toy_run, test_split, tmp_path):
    """(user_id, timestamp, item_id) of every test sample, through the Ray Data pipeline,
    ranks each target where the run's own evaluation did (or misses it in both)."""
    run, prepared = toy_run
    saved = pq.read_table(run / "predictions_test.parquet").to_pandas().set_index("sample_id")["rank"]
    queries = test_split.select(["sample_id", "user_id", "timestamp", "item_id"])
    pq.write_table(queries, tmp_path / "queries.parquet")
    keys = [(r["user_id"], r["timestamp"]) for r in queries.to_pylist()]
    assert len(set(keys)) < len(keys)  # same-second test samples: the item_id tie-break is exercised

    res = _predict(_spec(run, queries, prepared), tmp_path / "queries.parquet", tmp_path / "out")
    got = _read_out(tmp_path / "out")
    assert res.manifest["rows_in"] == res.manifest["rows_out"] == queries.num_rows and res.manifest["method"] == "eimf"
    assert got.select(queries.column_names).equals(queries)  # input columns kept, input order
    assert got.schema.field("top_item_ids").type == pa.list_(pa.int64())
    assert got.schema.field("top_scores").type == pa.list_(pa.float32())
    hits = 0
    for row in got.to_pylist():
        mine, theirs = _rank_in(row["top_item_ids"], row["item_id"]), int(saved[row["sample_id"]])
        assert len(row["top_item_ids"]) == TOP_N and row["top_scores"] == sorted(row["top_scores"], reverse=True)
        if theirs >= 0:
            assert mine == theirs, row
            hits += 1
        else:
            assert mine == -1 or mine >= max(KS), row
    assert hits > 0


def test_rebuilt_histories_equal_the_stored_ones(toy_run, test_split):
    """The same test samples given as explicit ``history_item_ids`` score identically (so the
    as-of-time histories are the test split's), and exclusion keeps history items out."""
    run, prepared = toy_run
    by_user = test_split.select(["sample_id", "user_id", "timestamp", "item_id"])
    explicit = test_split.select(["sample_id", "history_item_ids"])
    a, bad_a = EimfScorer(**_spec(run, by_user, prepared).kwargs).score(by_user)
    b, bad_b = EimfScorer(**_spec(run, explicit).kwargs).score(explicit)
    assert bad_a == bad_b == []
    assert a.column("top_item_ids").equals(b.column("top_item_ids"))
    assert a.column("top_scores").equals(b.column("top_scores"))
    for hist, top in zip(explicit.column("history_item_ids").to_pylist(), b.column("top_item_ids").to_pylist()):
        assert not set(hist[-MAX_LEN:]) & set(top)


# ----------------------------------------------------------------------------- brute force


def _history_from_log(log: pa.Table, user: int, t: int | None) -> list[int]:
    """The user's items with timestamp < t (all without t), ordered by (timestamp, item_id),
    the most recent MAX_HISTORY kept."""
    rows = sorted((r["timestamp"], r["item_id"]) for r in log.to_pylist() if r["user_id"] == user
                  and (t is None or r["timestamp"] < t))
    return [i for _, i in rows][-MAX_HISTORY:]


def test_top_n_equals_brute_force_max_over_interests(toy_run):
    from distrec.data.storage import open_table
    from distrec.model.interests.artefact import load_eimf

    run, prepared = toy_run
    log = open_table(prepared, "interactions")
    model, index, _ = load_eimf(run, heads=False)
    emb = model.backbone.item_emb.weight.detach().numpy()  # row r = catalogue item index.ids[r - 1]
    users = [0, 5, 11, 17, 23]
    times = [int(np.median([r["timestamp"] for r in log.to_pylist() if r["user_id"] == u])) for u in users]
    # as of a time; as of now (no timestamp, or null ones)
    queries = [pa.table({"user_id": pa.array(users, pa.int64()), "timestamp": pa.array(times, pa.int64())}),
               pa.table({"user_id": pa.array(users, pa.int64())}),  # as of now
               pa.table({"user_id": pa.array(users, pa.int64()), "timestamp": pa.array([None] * 5, pa.int64())})]
    for q in queries:
        top_n = 12
        out, bad = EimfScorer(**_spec(run, q, prepared, top_n=top_n, batch_size=2).kwargs).score(q)
        assert bad == []
        for row, got_ids, got_scores in zip(q.to_pylist(), out.column("top_item_ids").to_pylist(),
                                            out.column("top_scores").to_pylist()):
            hist = _history_from_log(log, row["user_id"], row.get("timestamp"))[-MAX_LEN:]
            rows = np.searchsorted(index.ids, hist) + 1
            with torch.no_grad():
                inter = model.backbone(torch.tensor([list(rows) + [0] * (MAX_LEN - len(rows))]),
                                       torch.tensor([[True] * len(rows) + [False] * (MAX_LEN - len(rows))]))[0].numpy()
            scores = (inter @ emb[1:].T).max(axis=0)  # [N]: max over interests
            scores[rows - 1] = -np.inf  # eval.exclude_history
            order = np.argsort(-scores, kind="stable")[:top_n]
            assert got_ids == index.ids[order].tolist()
            np.testing.assert_allclose(got_scores, scores[order], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- bad rows


def test_bad_rows_error_names_file_and_row_and_skip_counts_them(toy_run, tmp_path):
    from distrec.data.storage import open_table

    run, prepared = toy_run
    log = open_table(prepared, "interactions")
    first = min(r["timestamp"] for r in log.to_pylist() if r["user_id"] == 3)
    users = pa.table({"user_id": pa.array([1, 999, 2, 3, 4], pa.int64()),
                      "timestamp": pa.array([2000, 2000, 2000, first, 2000], pa.int64())})
    src = tmp_path / "users.parquet"
    pq.write_table(users, src)
    spec = _spec(run, users, prepared)
    with pytest.raises(DataError, match=r"users\.parquet, row 1: user_id 999 is not in the run's user table "
                                        r"\(and 1 more bad rows\)"):
        _predict(spec, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    res = _predict(spec, src, tmp_path / "out", on_bad_row="skip")
    got = _read_out(tmp_path / "out")
    assert res.manifest["bad_rows"] == 2 and res.manifest["rows_out"] == 3
    assert got.column("user_id").to_pylist() == [1, 2, 4]
    reasons = {b["row"]: b["reason"] for b in res.manifest["bad_examples"]}
    assert reasons[1] == "user_id 999 is not in the run's user table"
    assert reasons[3] == f"empty history: user_id 3 has no interaction before timestamp {first}"

    hist = pa.table({"history_item_ids": pa.array([[1, 2], [], [5, 99999], None, [7]], pa.list_(pa.int64()))})
    src = tmp_path / "hist.arrow"
    with pa.OSFile(str(src), "wb") as f, pa.ipc.new_file(f, hist.schema) as w:
        w.write_table(hist)
    spec = _spec(run, hist)
    with pytest.raises(DataError, match=r"hist\.arrow, row 1: empty history \(and 2 more bad rows\)"):
        _predict(spec, src, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    res = _predict(spec, src, tmp_path / "out2", on_bad_row="skip")
    assert res.manifest["bad_rows"] == 3 and _read_out(tmp_path / "out2").num_rows == 2
    reasons = {b["row"]: b["reason"] for b in res.manifest["bad_examples"]}
    assert reasons == {1: "empty history", 2: "item_id 99999 is not in the run's catalogue", 3: "empty history"}


# ----------------------------------------------------------------------------- up-front checks


def test_spec_checks_columns_and_data_up_front(toy_run, tmp_path):
    run, prepared = toy_run
    assert is_eimf_run(run) and not is_eimf_run(run.parent) and not is_eimf_run(tmp_path / "nope")
    missing = r"no column 'user_id' \(or 'history_item_ids'\), needed by EIMF run " + re.escape(str(run))
    with pytest.raises(DataError, match=missing):
        eimf_spec(str(run), pa.schema([("uid", pa.int64())]), 10, 8, False)
    with pytest.raises(DataError, match=rf"'timestamp' is string, EIMF run {re.escape(str(run))} needs"):
        eimf_spec(str(run), pa.schema([("user_id", pa.int64()), ("timestamp", pa.string())]), 10, 8, False,
                  prepared=prepared)
    with pytest.raises(DataError, match="already has a column 'top_item_ids'"):
        eimf_spec(str(run), pa.schema([("history_item_ids", pa.list_(pa.int64())), ("top_item_ids", pa.int64())]),
                  10, 8, False)
    # a copy of the artefact alone: no outputs say which prepared folder it was trained on
    bare = tmp_path / "out" / "ibim"
    bare.mkdir(parents=True)
    for name in ("model.safetensors", "eimf_config.json"):
        (bare / name).write_bytes((run / name).read_bytes())
    assert is_eimf_run(bare) and run_prepared(bare) is None
    unrecorded = rf"EIMF run {re.escape(str(bare))}: neither report\.json nor \.\./results\.json records"
    with pytest.raises(DataError, match=unrecorded):
        eimf_spec(str(bare), pa.schema([("user_id", pa.int64())]), 10, 8, False)
    eimf_spec(str(bare), pa.schema([("history_item_ids", pa.list_(pa.int32()))]), 10, 8, False)  # explicit: no data
    (bare.parent / "results.json").write_text(json.dumps({"prepared": str(prepared)}))  # as `eimf experiment` writes it
    assert run_prepared(bare) == prepared
    assert eimf_spec(str(bare), pa.schema([("user_id", pa.int64())]), 10, 8, False).kwargs["prepared"] == str(prepared)
    # `distrec predict --share-prefix` (a config override) means nothing to an EIMF run: refused, nothing written
    from distrec.predict.driver import predict

    pq.write_table(pa.table({"user_id": pa.array([1], pa.int64())}), tmp_path / "rows.parquet")
    with pytest.raises(ConfigError, match="an EIMF stage folder takes no config overrides"):
        predict(str(run), str(tmp_path / "rows.parquet"), str(tmp_path / "scored"), PredictOptions(progress=False),
                overrides=["train.share_prefix=true"])
    assert not (tmp_path / "scored").exists()


def test_cli_finds_the_prepared_data_from_the_run_and_equals_the_pipeline(toy_run, test_split, tmp_path):
    """``distrec predict --run <stage folder>``: the run's report names its prepared data."""
    from typer.testing import CliRunner

    from distrec.cli import app

    run, prepared = toy_run
    queries = test_split.select(["sample_id", "user_id", "timestamp", "item_id"])
    pq.write_table(queries, tmp_path / "queries.parquet")
    out = CliRunner().invoke(app, ["predict", "--run", str(run), "--input", str(tmp_path / "queries.parquet"),
                                   "--out", str(tmp_path / "cli"), "--top-k", str(TOP_N)])
    assert out.exit_code == 0, out.output
    assert f"predicted {queries.num_rows} of {queries.num_rows} rows (eimf)" in out.output
    _predict(_spec(run, queries, prepared), tmp_path / "queries.parquet", tmp_path / "direct")
    cli, direct = _read_out(tmp_path / "cli"), _read_out(tmp_path / "direct")
    assert cli.drop(["top_scores"]).equals(direct.drop(["top_scores"]))  # other batch and chunk sizes
    np.testing.assert_allclose(np.concatenate(cli.column("top_scores").to_pylist()),
                               np.concatenate(direct.column("top_scores").to_pylist()), rtol=1e-5, atol=1e-6)
