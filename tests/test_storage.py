"""Prepared-folder storage: round trip, manifest, verify, atomic writes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distrec.data import storage
from distrec.data.schema import CTR_SAMPLES, ITEMS, USERS
from distrec.errors import DataError


def _ctr(n: int, start: int = 0) -> pa.Table:
    ids = np.arange(start, start + n, dtype=np.int64)
    hist = [[int(j) for j in range(k % 4)] for k in range(n)]
    return pa.Table.from_pydict(
        {
            "sample_id": ids,
            "user_id": ids % 7,
            "item_id": ids % 11,
            "rating": (ids % 5 + 1).astype(np.float32),
            "timestamp": ids * 10,
            "label": (ids % 5 + 1 >= 4).astype(np.int8),
            "history_item_ids": hist,
            "history_ratings": [[float(j) for j in h] for h in hist],
        },
        schema=CTR_SAMPLES,
    )


ITEM_TABLE = pa.Table.from_pylist(
    [{"item_id": 1, "title": "A", "categories": ["x"], "year": 1999, "author": None, "publisher": None, "source_id": "1"}],
    schema=ITEMS,
)
USER_TABLE = pa.Table.from_pylist([{"user_id": 1, "gender": "F", "age": 25, "source_id": "1"}], schema=USERS)
SPLITS = {"train": _ctr(10), "valid": _ctr(3, 10), "test": _ctr(0, 13)}


def _write(out, splits=SPLITS, **kw):
    kw.setdefault("num_shards", 4)
    return storage.write_prepared(out, splits, items=ITEM_TABLE, users=USER_TABLE,
                                  meta={"dataset": "toy", "task": "ctr", "stats": {"users": 7}}, **kw)


def test_round_trip_and_manifest(tmp_path):
    out = tmp_path / "prep"
    manifest = _write(out)
    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == storage.FORMAT_VERSION and manifest["dataset"] == "toy"
    assert {"created_at", "distrec_version", "stats"} <= manifest.keys()
    train = manifest["splits"]["train"]
    # 10 rows in 4 contiguous shards; 3 rows -> 3 shards; 0 rows -> one empty shard
    assert [f["rows"] for f in train["files"]] == [2, 3, 2, 3]
    assert [f["path"] for f in train["files"]] == [f"train/part-0000{i}.parquet" for i in range(4)]
    assert [f["rows"] for f in manifest["splits"]["valid"]["files"]] == [1, 1, 1]
    assert [f["rows"] for f in manifest["splits"]["test"]["files"]] == [0]
    assert train["rows"] == 10
    assert train["positives"] == int(np.sum(SPLITS["train"].column("label").to_numpy()))
    assert train["positive_rate"] == pytest.approx(train["positives"] / 10)
    assert manifest["splits"]["test"]["positive_rate"] is None
    for f in train["files"]:
        assert f["sha256"] == hashlib.sha256((out / f["path"]).read_bytes()).hexdigest()
    assert train["sha256"] == hashlib.sha256("".join(f["sha256"] for f in train["files"]).encode()).hexdigest()

    for name, table in SPLITS.items():
        assert storage.open_split(out, name).equals(table)
    assert pq.read_table(out / "train/part-00001.parquet").equals(SPLITS["train"].slice(2, 3))
    assert storage.open_table(out, "items").equals(ITEM_TABLE)
    assert storage.open_table(out, "users").equals(USER_TABLE)
    assert storage.verify(out)["splits"]["train"]["rows"] == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]  # no temp leftovers


def test_verify_names_modified_shard(tmp_path):
    out = tmp_path / "prep"
    _write(out)
    shard = out / "train" / "part-00002.parquet"
    pq.write_table(SPLITS["train"].slice(0, 2), shard)  # valid Parquet, different content
    with pytest.raises(DataError, match="part-00002.parquet.*does not match"):
        storage.verify(out)
    shard.unlink()
    with pytest.raises(DataError, match="part-00002.parquet.*missing"):
        storage.verify(out)


def test_folder_without_manifest_is_incomplete(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match="incomplete"):
        storage.verify(tmp_path / "half")
    with pytest.raises(DataError, match="incomplete"):
        storage.open_split(tmp_path / "half", "train")


class Boom(RuntimeError):
    pass


def _fail_on_second_shard(monkeypatch):
    real, calls = storage._write_parquet, []

    def flaky(table, path):
        if path.name.startswith("part-"):
            calls.append(path)
            if len(calls) == 2:
                raise Boom(f"disk full writing {path}")
        real(table, path)

    monkeypatch.setattr(storage, "_write_parquet", flaky)


def test_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    _fail_on_second_shard(monkeypatch)
    with pytest.raises(Boom):
        _write(tmp_path / "prep")
    assert list(tmp_path.iterdir()) == []  # neither target nor temp folder


def test_failed_overwrite_preserves_existing_target(tmp_path, monkeypatch):
    out = tmp_path / "prep"
    old = _write(out)
    _fail_on_second_shard(monkeypatch)
    with pytest.raises(Boom):
        _write(out, {"train": _ctr(20), "valid": _ctr(2), "test": _ctr(2)}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]
    assert storage.verify(out) == old


def test_single_parquet_file_is_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "labels.parquet"
    assert storage.write_parquet_file(_ctr(3), path) == path
    assert pq.read_table(path).equals(_ctr(3))
    storage.write_parquet_file(_ctr(5), path)
    assert pq.read_table(path).equals(_ctr(5))
    real = storage._write_parquet

    def half_then_fail(table, target):
        real(table.slice(0, 1), target)  # a partial file exists under the temporary name
        raise Boom(f"disk full writing {target}")

    monkeypatch.setattr(storage, "_write_parquet", half_then_fail)
    with pytest.raises(Boom):
        storage.write_parquet_file(_ctr(9), path)
    assert pq.read_table(path).equals(_ctr(5))
    assert [p.name for p in path.parent.iterdir()] == ["labels.parquet"]  # no temporary left


def test_existing_target_needs_overwrite(tmp_path):
    out = tmp_path / "prep"
    _write(out)
    with pytest.raises(DataError, match="already exists"):
        _write(out)
    new = _write(out, {"train": _ctr(5), "valid": _ctr(1), "test": _ctr(1)}, overwrite=True, num_shards=1)
    assert storage.verify(out)["splits"]["train"]["rows"] == 5 == new["splits"]["train"]["rows"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"]  # old folder removed


@pytest.mark.parametrize("rows,shards", [(0, 4), (1, 4), (10, 3), (7, 7), (100, 1)])
def test_shard_bounds_cover_rows_contiguously(rows, shards):
    bounds = storage.shard_bounds(rows, shards)
    assert len(bounds) == max(1, min(rows, shards))
    assert bounds[0][0] == 0 and bounds[-1][1] == rows
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
