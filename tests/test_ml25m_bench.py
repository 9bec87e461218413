"""The ML-25M-shaped raw data generator of ``jobs/bench/ml25m_prepare.py``, at a tiny size."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from bench_scripts import load_bench


@pytest.fixture(scope="module")
def bench():
    return load_bench("ml25m_prepare")


@pytest.fixture(scope="module")
def raw(bench, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml25m") / "raw"
    # small chunks: several row groups, so chunk boundaries are exercised too
    info = bench.generate(folder, n_ratings=8000, n_users=200, n_items=1000, seed=3, chunk_ratings=1500)
    return folder, info


def test_interactions_shape(raw):
    folder, info = raw
    table = pq.read_table(folder / "interactions.parquet")
    assert pq.ParquetFile(folder / "interactions.parquet").metadata.num_row_groups > 1
    assert table.num_rows == 8000 == info["ratings"]
    users = table.column("user_id").to_numpy()
    items = table.column("item_id").to_numpy()
    ts = table.column("timestamp").to_numpy()
    ratings = table.column("rating").to_numpy()

    per_user = np.bincount(users)[1:]
    assert len(per_user) == 200 and per_user.min() >= 20  # users 1..200, each with >= 20 ratings
    assert set(np.unique(items)) <= set(range(1, 1001))
    assert len(np.unique(items)) > 500  # most of the catalogue is rated
    pairs = users * 10_000 + items
    assert len(np.unique(pairs)) == len(pairs)  # a user rates an item once
    assert set(np.unique(ratings).tolist()) <= {x / 2 for x in range(1, 11)}

    for u in np.unique(users):  # each user's rows are contiguous and in time order
        rows = np.flatnonzero(users == u)
        assert rows[-1] - rows[0] + 1 == rows.size
        assert (np.diff(ts[rows]) >= 0).all()

    top = np.sort(per_user)[::-1][:2]  # top 1% of 200 users
    assert top.sum() / per_user.sum() > 0.03  # a long tail: far more than 1% of the ratings


def test_items_table(raw):
    folder, _ = raw
    items = pq.read_table(folder / "items.parquet")
    assert items.num_rows == 1000
    assert items.column("item_id").to_pylist() == list(range(1, 1001))
    assert all(t.startswith("Synthetic Movie ") and t.strip() for t in items.column("title").to_pylist())
    assert all(g for g in items.column("genres").to_pylist())


def test_deterministic_and_loadable(bench, raw, tmp_path):
    folder, _ = raw
    again = tmp_path / "raw"
    bench.generate(again, n_ratings=8000, n_users=200, n_items=1000, seed=3, chunk_ratings=1500)
    assert pq.read_table(again / "interactions.parquet").equals(pq.read_table(folder / "interactions.parquet"))

    from distrec.data.loaders.custom import load_custom

    tables = load_custom(folder)
    assert tables.interactions.num_rows == 8000
    assert tables.users.num_rows == 200
