"""The ``custom`` dataset: your own interactions/items/users files, as CSV or Parquet.

Every expectation is worked out by hand from the few rows written here (see the comments).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distrec.config import DataConfig, load_job_config
from distrec.data import storage
from distrec.data.loaders import label_rule, load_dataset
from distrec.data.prepare import prepare
from distrec.errors import ConfigError, DataError

# String ids. Items sort A,B,C,D -> 0..3; users sort as text: u1 -> 0, u10 -> 1, u2 -> 2.
ITEMS = {
    "item_id": ["B", "A", "D", "C"],
    "title": ["Beta", "Alpha", "Delta", "Gamma"],
    "genres": ["", "Action|Drama", "Drama", "Comedy"],
    "brand": ["", "Acme", "Zed", ""],
}
INTERACTIONS = {
    "user_id": ["u2", "u1", "u1", "u10", "u1", "u2", "u10"],
    "item_id": ["B", "A", "B", "C", "C", "A", "D"],
    "timestamp": [100, 50, 60, 70, 80, 90, 75],
    "rating": [4, 5, 2, 3, 4, 1, 3],
    "label": [1, 1, 0, 1, 0, 1, 0],
}
USERS = {"user_id": ["u10", "u1", "u2"], "gender": ["F", "M", ""], "age": ["31", "", "45"]}

# Global order (time, user, item): u1A50 u1B60 u10C70 u10D75 u1C80 u2A90 u2B100. With
# min_history=1 the samples are u1B60 (history A), u10D75 (C), u1C80 (A, B), u2B100 (A).
SAMPLES = [(0, 1, 60, [0]), (1, 3, 75, [2]), (0, 2, 80, [0, 1]), (2, 1, 100, [0])]


def write(folder: Path, tables: dict[str, dict], fmt: str = "csv") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, columns in tables.items():
        table = pa.table(columns)
        if fmt == "csv":
            lines = [",".join(columns)] + [",".join(str(v) for v in row.values()) for row in table.to_pylist()]
            (folder / f"{name}.csv").write_text("\n".join(lines) + "\n")
        else:
            pq.write_table(table, folder / f"{name}.parquet")
    return folder


def all_samples(out: Path) -> list[dict]:
    rows = [r for s in ("train", "valid", "test") for r in storage.open_split(out, s).to_pylist()]
    return sorted(rows, key=lambda r: r["sample_id"])


def ctr(folder: Path, out: Path, **kw) -> list[dict]:
    cfg = DataConfig(dataset="custom", raw_path=str(folder), min_history=1, num_shards=1,
                     split=[0.5, 0.25, 0.25], **kw)
    prepare(cfg, out=out, progress=False)
    return all_samples(out)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_string_ids_map_to_sorted_dense_ids(tmp_path: Path, fmt: str) -> None:
    folder = write(tmp_path, {"items": ITEMS, "interactions": INTERACTIONS, "users": USERS}, fmt)
    tables = load_dataset("custom", folder)
    assert tables.interactions.to_pylist() == [
        {"user_id": u, "item_id": i, "rating": r, "timestamp": t}
        for u, i, r, t in [(2, 1, 4.0, 100), (0, 0, 5.0, 50), (0, 1, 2.0, 60), (1, 2, 3.0, 70),
                           (0, 2, 4.0, 80), (2, 0, 1.0, 90), (1, 3, 3.0, 75)]
    ]
    items = tables.items.to_pylist()
    assert [(r["item_id"], r["source_id"], r["title"]) for r in items] == [
        (0, "A", "Alpha"), (1, "B", "Beta"), (2, "C", "Gamma"), (3, "D", "Delta")]
    assert [r["categories"] for r in items] == [["Action", "Drama"], [], ["Comedy"], ["Drama"]]
    assert [r["publisher"] for r in items] == ["Acme", None, None, "Zed"]
    users = tables.users.to_pylist()
    assert [(r["user_id"], r["source_id"], r["gender"], r["age"]) for r in users] == [
        (0, "u1", "M", None), (1, "u10", "F", 31), (2, "u2", None, 45)]


def test_integer_ids_sort_numerically_parquet(tmp_path: Path) -> None:
    folder = write(tmp_path, {
        "items": {"item_id": [10, 2, 7], "title": ["Ten", "Two", "Seven"],
                  "categories": [["x", "y"], [], None]},
        "interactions": {"user_id": [100, 20, 100], "item_id": [2, 10, 7],
                         "timestamp": pa.array([3, 1, 2], pa.timestamp("s")), "rating": [1.5, 2.0, 3.0]},
    }, "parquet")
    tables = load_dataset("custom", folder)
    # Items 2 -> 0, 7 -> 1, 10 -> 2; users 20 -> 0, 100 -> 1 (numeric, not text, order).
    assert [(r["source_id"], r["categories"]) for r in tables.items.to_pylist()] == [
        ("2", []), ("7", []), ("10", ["x", "y"])]
    assert tables.interactions.to_pylist() == [
        {"user_id": 1, "item_id": 0, "rating": 1.5, "timestamp": 3},
        {"user_id": 0, "item_id": 2, "rating": 2.0, "timestamp": 1},
        {"user_id": 1, "item_id": 1, "rating": 3.0, "timestamp": 2}]


def test_missing_users_file_gives_empty_profiles_keeping_source_ids(tmp_path: Path) -> None:
    folder = write(tmp_path, {"items": ITEMS, "interactions": INTERACTIONS})
    users = load_dataset("custom", folder).users.to_pylist()
    assert [(r["user_id"], r["source_id"]) for r in users] == [(0, "u1"), (1, "u10"), (2, "u2")]
    assert all(r[k] is None for r in users for k in ("gender", "age", "occupation", "zip", "location"))


def test_iso_timestamps_in_csv(tmp_path: Path) -> None:
    inter = {"user_id": ["a", "a"], "item_id": ["A", "B"],
             "timestamp": ["1970-01-02", "1970-01-01T00:01:00+00:00"], "rating": [1, 2]}
    folder = write(tmp_path, {"items": ITEMS, "interactions": inter})
    assert load_dataset("custom", folder).interactions.column("timestamp").to_pylist() == [86400, 60]


def test_label_rule_threshold(tmp_path: Path) -> None:
    folder = write(tmp_path / "raw", {"items": ITEMS, "interactions": INTERACTIONS})
    got = ctr(folder, tmp_path / "out", label_threshold=4.0)
    # Ratings of the four samples: 2, 3, 4, 4.
    assert [(r["user_id"], r["item_id"], r["timestamp"], r["history_item_ids"]) for r in got] == SAMPLES
    assert [r["label"] for r in got] == [0, 0, 1, 1]


def test_label_rule_threshold_needs_a_threshold(tmp_path: Path) -> None:
    folder = write(tmp_path / "raw", {"items": ITEMS, "interactions": INTERACTIONS})
    with pytest.raises(DataError, match="no default rating threshold: set data.label_threshold"):
        ctr(folder, tmp_path / "out")
    with pytest.raises(DataError, match="no default rating threshold"):
        label_rule("custom")


def test_label_rule_column(tmp_path: Path) -> None:
    folder = write(tmp_path / "raw", {"items": ITEMS, "interactions": INTERACTIONS})
    got = ctr(folder, tmp_path / "out", label_rule="column")
    # Labels of u1B60, u10D75, u1C80, u2B100 in the file: 0, 0, 0, 1.
    assert [r["label"] for r in got] == [0, 0, 0, 1]
    assert [r["history_ratings"] for r in got] == [[1.0], [1.0], [1.0, 0.0], [1.0]]


def test_label_rule_column_only_for_custom() -> None:
    with pytest.raises(ConfigError, match="label_rule=column.*'custom'"):
        load_job_config(None, ["data.dataset=ml-1m", "data.label_rule=column"])


def test_label_rule_implicit_samples_unseen_negatives_deterministically(tmp_path: Path) -> None:
    inter = {k: v for k, v in INTERACTIONS.items() if k not in ("rating", "label")}
    folder = write(tmp_path / "raw", {"items": ITEMS, "interactions": inter})
    got = ctr(folder, tmp_path / "a", label_rule="implicit", seed=7)
    assert [r["sample_id"] for r in got] == list(range(8))
    positives, negatives = got[0::2], got[1::2]
    assert [(r["user_id"], r["item_id"], r["timestamp"], r["history_item_ids"]) for r in positives] == SAMPLES
    assert [(r["label"], r["rating"]) for r in positives] == [(1, 1.0)] * 4
    assert [(r["label"], r["rating"]) for r in negatives] == [(0, 0.0)] * 4
    for pos, neg in zip(positives, negatives):
        assert (neg["user_id"], neg["timestamp"], neg["history_item_ids"]) == (
            pos["user_id"], pos["timestamp"], pos["history_item_ids"])
    # Items never touched: u1 (A, B, C seen) -> D only; u10 (C, D) -> A or B; u2 (A, B) -> C or D.
    assert negatives[0]["item_id"] == 3 and negatives[2]["item_id"] == 3
    assert negatives[1]["item_id"] in (0, 1) and negatives[3]["item_id"] in (2, 3)
    assert ctr(folder, tmp_path / "b", label_rule="implicit", seed=7) == got


def test_implicit_with_too_few_unseen_items_names_the_user(tmp_path: Path) -> None:
    inter = {k: v for k, v in INTERACTIONS.items() if k not in ("rating", "label")}
    folder = write(tmp_path / "raw", {"items": ITEMS, "interactions": inter})
    # u1 (canonical user 0) has seen 3 of the 4 items: two negatives cannot be found.
    with pytest.raises(DataError, match="user_id 0 interacted with 3 of the 4 items.*negatives_per_positive=2"):
        ctr(folder, tmp_path / "out", label_rule="implicit", negatives_per_positive=2)


def test_prepare_writes_manifest_with_expected_counts(tmp_path: Path) -> None:
    folder = write(tmp_path / "raw", {"items": ITEMS, "interactions": INTERACTIONS, "users": USERS})
    cfg = DataConfig(dataset="custom", raw_path=str(folder), min_history=1, num_shards=1,
                     split=[0.5, 0.25, 0.25], label_threshold=4.0)
    out, manifest = prepare(cfg, out=tmp_path / "out", progress=False)
    # 4 samples -> 2 / 1 / 1 in time order: (u1B60 0, u10D75 0) / u1C80 1 / u2B100 1.
    assert {s: (v["rows"], v["positives"]) for s, v in manifest["splits"].items()} == {
        "train": (2, 0), "valid": (1, 1), "test": (1, 1)}
    stats = manifest["stats"]
    assert (stats["raw_interactions"], stats["interactions"], stats["users"], stats["items"], stats["samples"]) == (
        7, 7, 3, 4, 4)
    assert storage.open_table(out, "items").column("source_id").to_pylist() == ["A", "B", "C", "D"]


def test_prepare_custom_needs_a_raw_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pass --raw-path DIR or set data.raw_path"):
        prepare(DataConfig(dataset="custom", label_threshold=4.0), out=tmp_path / "o", progress=False)


def fails(folder: Path, *fragments: str, label: str = "threshold") -> None:
    with pytest.raises(DataError) as info:
        load_dataset("custom", folder, label)
    for fragment in fragments:
        assert fragment in str(info.value), f"{fragment!r} not in {str(info.value)!r}"


def test_missing_items_file_names_what_was_found(tmp_path: Path) -> None:
    folder = write(tmp_path, {"interactions": INTERACTIONS})
    fails(folder, "items.parquet or items.csv not found", "found ['interactions.csv']")


def test_missing_column_names_file_and_column(tmp_path: Path) -> None:
    folder = write(tmp_path, {"items": ITEMS, "interactions": {k: v for k, v in INTERACTIONS.items() if k != "rating"}})
    fails(folder, "interactions.csv: line 1: missing column(s) ['rating']")
    folder = write(tmp_path / "pq", {"items": {"item_id": ["A"]}, "interactions": INTERACTIONS}, "parquet")
    fails(folder, "items.parquet: missing column(s) ['title']")
    no_label = {k: v for k, v in INTERACTIONS.items() if k != "label"}
    fails(write(tmp_path / "lab", {"items": ITEMS, "interactions": no_label}), "missing column(s) ['label']",
          label="column")


def test_empty_title(tmp_path: Path) -> None:
    items = dict(ITEMS, title=["Beta", "Alpha", " ", "Gamma"])
    fails(write(tmp_path, {"items": items, "interactions": INTERACTIONS}), "items.csv: line 4: column 'title' is empty")


def test_unknown_item_id_names_the_row(tmp_path: Path) -> None:
    inter = dict(INTERACTIONS, item_id=["B", "A", "B", "Z", "C", "A", "D"])
    fails(write(tmp_path, {"items": ITEMS, "interactions": inter}, "parquet"),
          "interactions.parquet: row 3: item_id 'Z' is not in items.parquet")


def test_unknown_user_id_when_users_given(tmp_path: Path) -> None:
    users = {"user_id": ["u1", "u2"]}
    fails(write(tmp_path, {"items": ITEMS, "interactions": INTERACTIONS, "users": users}),
          "interactions.csv: line 5: user_id 'u10' is not in users.csv")


def test_nan_and_unreadable_timestamp_and_rating(tmp_path: Path) -> None:
    fails(write(tmp_path / "a", {"items": ITEMS, "interactions": dict(INTERACTIONS, rating=["4", "5", "NaN", "3", "4", "1", "3"])}),
          "interactions.csv: line 4: column 'rating' is NaN")
    fails(write(tmp_path / "b", {"items": ITEMS, "interactions": dict(INTERACTIONS, rating=["4", "5", "2", "x", "4", "1", "3"])}),
          "interactions.csv: line 5: column 'rating': cannot read 'x'")
    ts = [100.0, 50.0, float("nan"), 70.0, 80.0, 90.0, 75.0]
    fails(write(tmp_path / "c", {"items": ITEMS, "interactions": dict(INTERACTIONS, timestamp=ts)}, "parquet"),
          "interactions.parquet: row 2: column 'timestamp' is NaN")
    ts = ["100", "50", "60", "soon", "80", "90", "75"]
    fails(write(tmp_path / "d", {"items": ITEMS, "interactions": dict(INTERACTIONS, timestamp=ts)}),
          "interactions.csv: line 5: column 'timestamp': cannot read 'soon' as a timestamp")


def test_label_other_than_zero_or_one(tmp_path: Path) -> None:
    fails(write(tmp_path, {"items": ITEMS, "interactions": dict(INTERACTIONS, label=[1, 1, 0, 2, 0, 1, 0])}),
          "interactions.csv: line 5: column 'label' must be 0 or 1, found 2", label="column")


def test_duplicate_item_ids(tmp_path: Path) -> None:
    items = dict(ITEMS, item_id=["B", "A", "D", "A"])
    fails(write(tmp_path, {"items": items, "interactions": INTERACTIONS}),
          "items.csv: line 5: duplicate item id (item_id='A'); first seen at line 3")


def test_duplicate_interaction(tmp_path: Path) -> None:
    inter = {k: v + [v[1]] for k, v in INTERACTIONS.items()}
    fails(write(tmp_path, {"items": ITEMS, "interactions": inter}, "parquet"),
          "interactions.parquet: row 7: duplicate interaction", "first seen at row 1")


def test_both_csv_and_parquet_is_ambiguous(tmp_path: Path) -> None:
    write(tmp_path, {"items": ITEMS, "interactions": INTERACTIONS})
    write(tmp_path, {"items": ITEMS}, "parquet")
    fails(tmp_path, "both items.parquet and items.csv")
