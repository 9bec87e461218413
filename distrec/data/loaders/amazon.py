"""Loader for one category of Amazon Reviews 2018 (Ni, Li & McAuley, EMNLP 2019).

The folder holds the category's reviews ``<Category>.json.gz`` (or the 5-core
``<Category>_5.json.gz``) and its metadata ``meta_<Category>.json.gz``, one JSON object per
line. We read ``reviewerID``, ``asin``, ``overall`` (1-5 stars) and ``unixReviewTime`` from
reviews, and ``asin``, ``title``, ``category`` (list) and ``brand`` from metadata. Decisions:

- ASINs become int64 item ids in sorted ASIN order over the metadata; reviewer ids become
  int64 user ids in sorted order; ``source_id`` keeps the raw key.
- ``brand`` goes to ``publisher`` (the maker); ``author`` stays null.
- The official metadata repeats some ASINs: the first record wins, the rest are counted.
- Reviews that repeat an earlier review exactly (same reviewer, ASIN, time and rating) are
  dropped and counted; two different ratings at the same (reviewer, ASIN, time) are an error,
  and so is a review of an ASIN the metadata lacks.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from distrec.data.loaders._checks import (
    check_known,
    check_ratings,
    check_unique,
    finish,
)
from distrec.data.loaders._fields import dense_ids, nulls, unescape
from distrec.data.loaders._io import Lines, require_present
from distrec.data.loaders._jsonl import number, read_json_lines, text, whole
from distrec.data.schema import CanonicalTables
from distrec.errors import DataError

AMAZON_SCALE = (1.0, 5.0)

_REVIEWS = pa.schema([
    ("reviewerID", pa.string()),
    ("asin", pa.string()),
    ("overall", pa.float32()),
    ("unixReviewTime", pa.int64()),
])
_META = pa.schema([
    ("asin", pa.string()),
    ("title", pa.string()),
    ("category", pa.list_(pa.string())),
    ("brand", pa.string()),
])


def load_amazon(folder: Path) -> CanonicalTables:
    reviews_path, meta_path = find_files(folder)
    raw = read_json_lines(reviews_path, _REVIEWS, _review_record)
    lines = Lines(reviews_path, 1)
    require_present(raw, _REVIEWS.names, lines)
    check_ratings(raw.column("overall"), *AMAZON_SCALE, lines)
    items, repeated_asins = _items(meta_path)
    check_known(raw.column("asin"), items.column("source_id"), lines, "asin", meta_path.name)

    raw, lines, repeated_reviews = _drop_exact_repeats(raw, lines)
    reviewers, user_ids = dense_ids(raw.column("reviewerID"))
    inter = pa.table({
        "user_id": user_ids,
        "item_id": pc.cast(pc.index_in(raw.column("asin"), value_set=items.column("source_id")),
                           pa.int64()),
        "rating": raw.column("overall"),
        "timestamp": raw.column("unixReviewTime"),
    })
    check_unique(inter, ["user_id", "item_id", "timestamp"], lines,
                 "review with a different rating")
    n = len(reviewers)
    users = pa.table({
        "user_id": pa.array(range(n), pa.int64()), "gender": nulls(n),
        "age": nulls(n, pa.int32()), "occupation": nulls(n), "zip": nulls(n),
        "location": nulls(n), "source_id": reviewers,
    })
    dropped = {
        f"exact repeats of an earlier review in {reviews_path.name}": repeated_reviews,
        f"repeated asin records in {meta_path.name} (first kept)": repeated_asins,
    }
    return finish(inter, items, users, str(folder), dropped)


def find_files(folder: Path) -> tuple[Path, Path]:
    """The reviews file and the metadata file of the one category in ``folder``."""
    found = sorted(p for p in folder.iterdir() if p.name.endswith((".json.gz", ".json")))
    meta = [p for p in found if p.name.startswith("meta_")]
    reviews = [p for p in found if not p.name.startswith("meta_")]
    if len(meta) != 1 or len(reviews) != 1:
        raise DataError(
            f"{folder}: expected one reviews file '<Category>.json.gz' and one metadata file "
            f"'meta_<Category>.json.gz' (Amazon Reviews 2018), found "
            f"{[p.name for p in found] or 'none'}"
        )
    return reviews[0], meta[0]


def _items(meta_path: Path) -> tuple[pa.Table, int]:
    """Canonical items in sorted ASIN order (first record per ASIN), and the repeat count."""
    meta = read_json_lines(meta_path, _META, _meta_record)
    require_present(meta, ["asin"], Lines(meta_path, 1))
    total = meta.num_rows
    meta = meta.append_column("row", pa.array(range(total), pa.int64()))
    first = meta.group_by("asin").aggregate([("row", "min")]).column("row_min")
    meta = meta.take(first)  # the first record of each asin
    meta = meta.take(pc.sort_indices(meta.column("asin")))
    n = meta.num_rows
    categories = [
        [u for u in (html.unescape(c).strip() for c in cats or [] if c) if u]
        for cats in meta.column("category").to_pylist()
    ]
    title = pc.fill_null(unescape(meta.column("title")), "")
    items = pa.table({
        "item_id": pa.array(range(n), pa.int64()),
        "title": title,
        "categories": pa.array(categories, pa.list_(pa.string())),
        "year": nulls(n, pa.int32()),
        "author": nulls(n),
        "publisher": unescape(meta.column("brand")),
        "source_id": meta.column("asin"),
    })
    return items, total - n


def _drop_exact_repeats(raw: pa.Table, lines: Lines) -> tuple[pa.Table, Lines, int]:
    """Drop reviews identical to an earlier one; the returned Lines still maps to the file."""
    keys = _REVIEWS.names
    indexed = raw.append_column("row", pa.array(range(raw.num_rows), pa.int64()))
    keep = indexed.group_by(keys).aggregate([("row", "min")]).column("row_min")
    if len(keep) == raw.num_rows:
        return raw, lines, 0
    keep = pc.take(keep, pc.sort_indices(keep))
    kept = pc.is_in(pa.array(range(raw.num_rows), pa.int64()), value_set=keep)
    gone = pc.indices_nonzero(pc.invert(kept)).to_pylist()
    skipped = tuple(lines.line(i) for i in gone)
    return raw.take(keep), Lines(lines.path, lines.first_line, skipped), len(gone)


def _review_record(r: dict[str, Any]) -> tuple[Any, ...]:
    return (
        text(r.get("reviewerID"), "reviewerID"),
        text(r.get("asin"), "asin"),
        number(r.get("overall"), "overall"),
        whole(r.get("unixReviewTime"), "unixReviewTime"),
    )


def _meta_record(r: dict[str, Any]) -> tuple[Any, ...]:
    """Metadata is descriptive, so only ``asin`` is strict; odd other fields are coerced."""
    cats = r.get("category")
    if isinstance(cats, str):
        cats = [cats]
    elif not isinstance(cats, list):
        cats = []
    title = r.get("title")
    brand = r.get("brand")
    return (
        text(r.get("asin"), "asin"),
        title if isinstance(title, str) else ("" if title is None else str(title)),
        [str(c) for c in cats],
        brand if isinstance(brand, str) else None,
    )
