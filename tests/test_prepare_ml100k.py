"""``prepare`` on the real MovieLens-100K, checked against an independent pandas computation.

The expectations come straight from RecBole's ``ml-100k.inter`` with pandas (sort by
(timestamp, user, item), ``groupby.cumcount``, integer-arithmetic split sizes), not from
distrec's loaders or sample builders. Run with ``-s`` to see the counts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fixtures_data import ml100k_raw_dir  # tests/ is on sys.path (no tests/__init__.py)

from distrec.config import DataConfig
from distrec.data import storage
from distrec.data.prepare import config_hash, default_out, is_prepared, prepare
from distrec.errors import DataError


@pytest.fixture(scope="module")
def raw_dir():
    return ml100k_raw_dir()


@pytest.fixture(scope="module")
def ratings(raw_dir) -> pd.DataFrame:
    """The raw ratings in global (timestamp, user, item) order, with ``earlier`` per user."""
    df = pd.read_csv(raw_dir / "ml-100k.inter", sep="\t")
    df.columns = ["user", "item", "rating", "timestamp"]
    df = df.sort_values(["timestamp", "user", "item"], kind="mergesort").reset_index(drop=True)
    df["earlier"] = df.groupby("user").cumcount()
    return df


def _sizes(n: int) -> tuple[int, int, int]:
    """80/10/10 with floors, remainder to test, in exact integer arithmetic."""
    train, valid = n * 8 // 10, n // 10
    return train, valid, n - train - valid


def _check_splits(manifest: dict, folder, expected: pd.DataFrame, label: bool) -> None:
    sizes = _sizes(len(expected))
    bounds = np.cumsum((0,) + sizes)
    for name, lo, hi in zip(("train", "valid", "test"), bounds[:-1], bounds[1:]):
        split, part = manifest["splits"][name], expected.iloc[lo:hi]
        assert split["rows"] == hi - lo
        table = storage.open_split(folder, name)
        assert table.column("timestamp").to_pylist() == part["timestamp"].tolist()
        assert table.column("user_id").to_pylist() == part["user"].tolist()
        assert table.column("item_id").to_pylist() == part["item"].tolist()
        if label:
            rate = float((part["rating"] >= 4).mean())
            assert split["positives"] == int((part["rating"] >= 4).sum())
            assert split["positive_rate"] == pytest.approx(rate, abs=1e-12)
            print(f"  {name}: {split['rows']:,} samples, positive rate {rate:.4f}")
        else:
            print(f"  {name}: {split['rows']:,} samples")


def test_prepare_ctr_matches_pandas(tmp_path, raw_dir, ratings):
    cfg = DataConfig(dataset="ml-100k", task="ctr", num_shards=3)
    folder, manifest = prepare(cfg, out=tmp_path / "ctr", raw_path=raw_dir, progress=False)
    stats = manifest["stats"]
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)
    assert ratings["user"].nunique() == 943 and ratings["item"].nunique() == 1682 and len(ratings) == 100_000

    expected = ratings[ratings["earlier"] >= 5]
    print(f"\nML-100K CTR: {len(expected):,} samples of {len(ratings):,} ratings "
          f"(overall positive rate {(expected['rating'] >= 4).mean():.4f})")
    assert stats["samples"] == len(expected)
    _check_splits(manifest, folder, expected, label=True)

    # one long history, recomputed from pandas: all earlier ratings of that user, oldest first
    test = storage.open_split(folder, "test")
    row = test.slice(test.num_rows - 1, 1).to_pylist()[0]
    mine = ratings[ratings["user"] == row["user_id"]]
    pos = mine.index.get_loc(row["sample_id"])
    assert row["history_item_ids"] == mine["item"].iloc[:pos].tolist()
    assert row["history_ratings"] == mine["rating"].iloc[:pos].astype(float).tolist()
    assert row["label"] == int(row["rating"] >= 4)

    assert storage.verify(folder)["splits"]["test"]["rows"] == manifest["splits"]["test"]["rows"]
    assert [len(s["files"]) for s in manifest["splits"].values()] == [3, 3, 3]
    assert is_prepared(folder, cfg) and not is_prepared(folder, DataConfig(task="ctr", min_history=6))
    again, m2 = prepare(cfg, out=folder, raw_path=raw_dir, progress=False)  # skipped: already prepared
    assert again == folder and m2["created_at"] == manifest["created_at"]


def test_prepare_generative_matches_pandas(tmp_path, raw_dir, ratings):
    cfg = DataConfig(dataset="ml-100k", task="generative", max_history=10, kcore=0, num_shards=2)
    folder, manifest = prepare(cfg, out=tmp_path / "gen", raw_path=raw_dir)  # with a progress bar
    expected = ratings[ratings["earlier"] >= 1]
    assert manifest["stats"]["samples"] == len(expected) == 100_000 - 943
    print(f"\nML-100K generative: {len(expected):,} samples (= ratings - users)")
    _check_splits(manifest, folder, expected, label=False)
    hist = storage.open_split(folder, "train").column("history_item_ids").to_pylist()
    assert max(map(len, hist)) == 10 and min(map(len, hist)) == 1


def test_prepare_refuses_empty_and_foreign_outputs(tmp_path, raw_dir):
    cfg = DataConfig(dataset="ml-100k", task="generative", kcore=1000)
    with pytest.raises(DataError, match=r"ml-100k \(generative; max_history=10, kcore=1000\).*empty after filtering"):
        prepare(cfg, out=tmp_path / "k", raw_path=raw_dir, progress=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="overwrite=True"):
        prepare(DataConfig(), out=tmp_path / "other", raw_path=raw_dir, progress=False)


def test_default_out_hashes_only_relevant_fields(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTREC_HOME", str(tmp_path))
    cfg = DataConfig(dataset="ml-100k", task="ctr")
    assert default_out(cfg) == tmp_path / "prepared" / f"ml-100k-ctr-{config_hash(cfg)}"
    assert config_hash(DataConfig(raw_path="/elsewhere", kcore=5)) == config_hash(cfg)  # kcore: generative only
    assert config_hash(DataConfig(min_history=6)) != config_hash(cfg)
    assert config_hash(DataConfig(task="generative", kcore=5)) != config_hash(DataConfig(task="generative"))
    assert default_out(DataConfig(prepared_dir=str(tmp_path / "mine"))) == tmp_path / "mine"
