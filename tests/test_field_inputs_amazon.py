"""Field inputs (issue 14), Amazon: titles that are missing, empty or scraped HTML; the 2023 release.

Files are written in each release's official layout (Amazon Reviews 2018: ``<Category>.json.gz`` +
``meta_<Category>.json.gz``; Amazon Reviews 2023: ``<Category>.jsonl.gz`` +
``meta_<Category>.jsonl.gz``, keyed by ``parent_asin`` and ``user_id`` with millisecond times).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from field_inputs_tools import byte_tokenizer
from fixtures_data import write_json_gz
from typer.testing import CliRunner

from distrec.cli import app
from distrec.config import DataConfig, PromptConfig
from distrec.data import storage
from distrec.data.loaders import dropped_rows, label_rule, load_dataset
from distrec.data.prepare import prepare
from distrec.data.prompts import Catalog
from distrec.data.tokenize import tokenize_batch
from distrec.errors import DataError

SPAN = ('<span class="a-size-medium a-color-secondary a-text-normal" style="font-family: Arial; '
        'font-weight: bold; color: #555555">Fender Leather Strap</span>' + " " * 10
        + "<div id='x'>" * 40)
SCRIPT = ("var aPageStart = (new Date()).getTime(); var ue_t0 = ue_t0 || +new Date(); "
          "function(){ window.ue_csm.ue.exec(); }") * 20


def write_2018(folder: Path, meta: list[dict]) -> Path:
    """Four users review every meta item, one day apart (Amazon Reviews 2018 layout)."""
    reviews = []
    for u, user in enumerate(["A1USER", "A2USER", "A3USER", "A4USER"]):
        for k, m in enumerate(meta):
            reviews.append({"overall": float(1 + (k + u) % 5), "verified": True, "reviewerID": user,
                            "asin": m["asin"], "reviewText": "ok", "summary": "ok",
                            "unixReviewTime": 1_400_000_000 + 86_400 * (k * 2 + u)})
    write_json_gz(folder / "Musical_Instruments.json.gz", reviews)
    write_json_gz(folder / "meta_Musical_Instruments.json.gz", meta)
    return folder


def ctr_cfg(dataset: str, folder: Path, out: Path) -> DataConfig:
    return DataConfig(dataset=dataset, task="ctr", raw_path=str(folder), prepared_dir=str(out), min_history=1,
                      num_shards=1)


def every_split_tokenises(out: Path, dataset: str) -> int:
    """What a tokenisation actor does with the prepared folder; returns the rows tokenised."""
    catalog = Catalog.for_dataset(dataset, pq.read_table(out / "items.parquet"), pq.read_table(out / "users.parquet"))
    tok = byte_tokenizer()
    n = 0
    for split in ("train", "valid", "test"):
        table = storage.open_split(out, split)
        got = tokenize_batch(table, catalog, tok, PromptConfig(max_length=4096, use_chat_template=False), "ctr",
                             yes_id=3, no_id=4)
        n += len(got["input_ids"])
    return n


# ---------------------------------------------------- failure 3: bad titles at prepare time

def test_missing_empty_and_html_titles_are_cleaned_or_dropped_at_prepare_time(tmp_path):
    meta = [
        {"asin": "B001", "title": "Shure SM58", "category": ["Microphones"]},
        {"asin": "B002", "category": ["Cables"]},                      # no title at all
        {"asin": "B003", "title": "", "category": ["Cables"]},          # empty title
        {"asin": "B004", "title": SPAN, "category": ["Straps"]},        # scraped HTML around a name
        {"asin": "B005", "title": SCRIPT, "category": ["Straps"]},      # a script fragment
        {"asin": "B006", "title": "Dunlop Tortex Picks", "category": ["Picks"]},
        {"asin": "B007", "title": "Ernie Ball Strings", "category": ["Strings"]},
    ]
    out, manifest = prepare(ctr_cfg("amazon", write_2018(tmp_path / "raw", meta), tmp_path / "out"), progress=False)
    items = pq.read_table(out / "items.parquet").to_pylist()
    assert sorted(i["title"] for i in items) == ["Dunlop Tortex Picks", "Ernie Ball Strings",
                                                  "Fender Leather Strap", "Shure SM58"]
    assert manifest["stats"]["title_cleaning"] == {
        "items without a title": 2,
        "items whose title is markup or script only": 1,
        "titles cleaned of markup": 1,
        "interactions of dropped items": 12,
    }
    kept = {i["item_id"] for i in items}
    for split in ("train", "valid", "test"):
        for s in storage.open_split(out, split).to_pylist():
            assert s["item_id"] in kept and set(s["history_item_ids"]) <= kept
    assert every_split_tokenises(out, "amazon") == manifest["stats"]["samples"]


def test_variant_2023_layout_with_null_escaped_html_blank_and_script_tag_titles(tmp_path):
    meta = [
        meta2023("P1", "Elixir Nanoweb Strings"),
        meta2023("P2", None),                                             # JSON null
        meta2023("P3", "&lt;b&gt;Bold&lt;/b&gt; Guitar   Capo"),          # escaped HTML
        meta2023("P4", "   "),                                            # blanks only
        meta2023("P5", "<script>document.write('x');</script>"),          # script tag only
        meta2023("P6", "Boss TU-3 Tuner"),
    ]
    folder = write_2023(tmp_path / "raw", "Musical_Instruments", meta,
                        [review2023(u, m["parent_asin"], k) for u in USERS5 for k, m in enumerate(meta)])
    out, manifest = prepare(ctr_cfg("amazon2023", folder, tmp_path / "out"), progress=False)
    titles = sorted(i["title"] for i in pq.read_table(out / "items.parquet").to_pylist())
    assert titles == ["Bold Guitar Capo", "Boss TU-3 Tuner", "Elixir Nanoweb Strings"]
    assert manifest["stats"]["title_cleaning"] == {
        "items without a title": 2,
        "items whose title is markup or script only": 1,
        "titles cleaned of markup": 1,
        "interactions of dropped items": 15,
    }
    assert every_split_tokenises(out, "amazon2023") == manifest["stats"]["samples"]


# ------------------------------------------------------------- failure 4: Amazon Reviews 2023

def meta2023(parent: str, title, store: str | None = "Fender", categories=("Musical Instruments",)) -> dict:
    return {"main_category": "Musical Instruments", "title": title, "average_rating": 4.5, "rating_number": 12,
            "features": ["Solid"], "description": ["Nice."], "price": 9.99,
            "images": [{"thumb": "t.jpg", "large": "l.jpg", "variant": "MAIN", "hi_res": None}], "videos": [],
            "store": store, "categories": list(categories), "details": {"Item Weight": "1 ounce"},
            "parent_asin": parent, "bought_together": None}


USERS5 = ("U1", "U2", "U3", "U4", "U5")


def review2023(user: str, parent: str, k: int, rating: float = 5.0, ms: int | None = None) -> dict:
    """A review in the 2023 layout; by default user ``U<n>`` writes item k on day k, n seconds in."""
    default_ms = 1_588_687_728_923 + 86_400_000 * k + 1000 * int(user[1:] if user[1:].isdigit() else 0)
    return {"rating": rating, "title": "Great", "text": "Works.", "images": [], "asin": parent + "-V",
            "parent_asin": parent, "user_id": user,
            "timestamp": ms if ms is not None else default_ms,
            "helpful_vote": 0, "verified_purchase": True}


def write_2023(folder: Path, category: str, meta: list[dict], reviews: list[dict]) -> Path:
    write_json_gz(folder / f"{category}.jsonl.gz", reviews)
    write_json_gz(folder / f"meta_{category}.jsonl.gz", meta)
    return folder


def test_amazon_2023_release_loads_from_its_official_layout(tmp_path):
    meta = [meta2023("B0B", "Capo", store=None, categories=()), meta2023("B0A", "Strap"),
            meta2023("B0A", "Strap, repeated record")]
    reviews = [
        review2023("AGKH", "B0B", 0, rating=4.0, ms=1_588_687_728_923),
        review2023("AE2Z", "B0A", 0, rating=2.0, ms=1_600_000_000_999),
        review2023("AGKH", "B0A", 0, rating=5.0, ms=1_650_000_000_000),
        review2023("AGKH", "B0A", 0, rating=5.0, ms=1_650_000_000_000),  # exact repeat: dropped
    ]
    folder = write_2023(tmp_path, "All_Beauty", meta, reviews)
    # the 2018 loader names what the folder holds and points to the 2023 loader
    with pytest.raises(DataError, match=r"All_Beauty\.jsonl\.gz.*meta_All_Beauty\.jsonl\.gz.*amazon2023"):
        load_dataset("amazon", folder)
    tables = load_dataset("amazon2023", folder)
    # ids: parent_asin and user_id in sorted order; times in whole seconds (ms // 1000)
    assert tables.items.to_pylist() == [
        {"item_id": 0, "title": "Strap", "categories": ["Musical Instruments"], "year": None, "author": None,
         "publisher": "Fender", "source_id": "B0A"},
        {"item_id": 1, "title": "Capo", "categories": ["Musical Instruments"], "year": None, "author": None,
         "publisher": None, "source_id": "B0B"},
    ]
    assert tables.interactions.to_pylist() == [
        {"user_id": 1, "item_id": 1, "rating": 4.0, "timestamp": 1_588_687_728},
        {"user_id": 0, "item_id": 0, "rating": 2.0, "timestamp": 1_600_000_000},
        {"user_id": 1, "item_id": 0, "rating": 5.0, "timestamp": 1_650_000_000},
    ]
    assert [u["source_id"] for u in tables.users.to_pylist()] == ["AE2Z", "AGKH"]
    assert dropped_rows(tables) == {"exact repeats of an earlier review in All_Beauty.jsonl.gz": 1,
                                    "repeated parent_asin records in meta_All_Beauty.jsonl.gz (first kept)": 1}
    assert label_rule("amazon2023") == 4.0


def test_amazon_2023_prepare_command(tmp_path):
    meta = [meta2023(f"P{i}", f"Item {i}") for i in range(6)]
    folder = write_2023(tmp_path / "raw", "Video_Games", meta,
                        [review2023(u, m["parent_asin"], k) for u in ("U1", "U2") for k, m in enumerate(meta)])
    result = CliRunner().invoke(app, ["data", "prepare", "amazon2023", "--raw-path", str(folder), "--out",
                                      str(tmp_path / "out"), "data.min_history=1", "data.num_shards=1"])
    assert result.exit_code == 0, result.output
    assert "prepared amazon2023 (ctr)" in result.output
    assert storage.read_manifest(tmp_path / "out")["stats"]["samples"] == 10


def test_variant_amazon2023_names_what_it_found_when_nothing_matches(tmp_path):
    write_json_gz(tmp_path / "Musical_Instruments.json.gz", [{"overall": 5.0}])
    write_json_gz(tmp_path / "meta_Musical_Instruments.json.gz", [{"asin": "B1"}])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        load_dataset("amazon2023", tmp_path)
    msg = str(err.value)
    assert "Musical_Instruments.json.gz" in msg and "meta_Musical_Instruments.json.gz" in msg and "notes.txt" in msg
    assert "'amazon'" in msg  # the 2018 layout: says which loader reads it
    # a reviews file without its metadata is named too
    other = tmp_path / "half"
    write_json_gz(other / "Books.jsonl.gz", [review2023("U1", "P1", 0)])
    with pytest.raises(DataError, match=r"Books\.jsonl\.gz.*meta_Books\.jsonl\.gz"):
        load_dataset("amazon2023", other)


def test_amazon_2023_conflicting_ratings_name_the_line_and_ms_apart_reviews_both_count(tmp_path):
    meta = [meta2023("B0A", "Strap")]
    base = 1_650_000_000_000
    folder = write_2023(tmp_path / "ok", "All_Beauty", meta,
                        [review2023("U1", "B0A", 0, rating=5.0, ms=base), review2023("U1", "B0A", 0, rating=3.0, ms=base + 400)])
    inter = load_dataset("amazon2023", folder).interactions.to_pylist()
    assert [(r["rating"], r["timestamp"]) for r in inter] == [(5.0, 1_650_000_000), (3.0, 1_650_000_000)]
    bad = write_2023(tmp_path / "bad", "All_Beauty", meta,
                     [review2023("U1", "B0A", 0, rating=5.0, ms=base), review2023("U1", "B0A", 0, rating=3.0, ms=base)])
    with pytest.raises(DataError, match=r"All_Beauty\.jsonl\.gz: line 2: duplicate review with a different rating"):
        load_dataset("amazon2023", bad)
