"""Loader for one category of Amazon Reviews 2023 (Hou et al., 2024; McAuley Lab release).

The folder holds the category's reviews ``<Category>.jsonl.gz`` and its item metadata
``meta_<Category>.jsonl.gz``, one JSON object per line, as the release publishes them.
Reviews: ``rating`` (1-5 stars), ``user_id``, ``parent_asin`` (the item: variants of one
product share it; ``asin`` names the variant and is not used), ``timestamp`` in
**milliseconds** (divided by 1000, whole unix seconds, as every canonical table holds).
Metadata, keyed by ``parent_asin``: ``title``; ``categories`` (the category path, often
empty; then ``[main_category]``); ``store`` (the maker, to ``publisher``). The other fields
(prices, images, videos, features, description, details, ratings summary, bought_together)
are not read. Ids, repeats and unknown items are handled as for 2018 (``_amazon.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from distrec.data.loaders._amazon import Release, load_release, string_list, string_or_none
from distrec.data.loaders._jsonl import number, text, whole
from distrec.data.schema import CanonicalTables

__all__ = ["AMAZON_2023", "load_amazon2023"]


def _review_record(r: dict[str, Any]) -> tuple[Any, ...]:
    return (
        text(r.get("user_id"), "user_id"),
        text(r.get("parent_asin"), "parent_asin"),
        number(r.get("rating"), "rating"),
        whole(r.get("timestamp"), "timestamp"),
    )


def _meta_record(r: dict[str, Any]) -> tuple[Any, ...]:
    """Only ``parent_asin`` is strict; the descriptive fields are coerced."""
    return (
        text(r.get("parent_asin"), "parent_asin"),
        string_or_none(r.get("title")),
        string_list(r.get("categories")),
        string_or_none(r.get("main_category")),
        string_or_none(r.get("store")),
    )


def _items_of(meta: pa.Table) -> tuple[pa.Array, list, pa.Array]:
    paths = meta.column("categories").to_pylist()
    mains = meta.column("main_category").to_pylist()
    categories = [path if path else ([main] if main else []) for path, main in zip(paths, mains)]
    return meta.column("title"), categories, meta.column("store")


AMAZON_2023 = Release(
    name="Amazon Reviews 2023",
    dataset="amazon2023",
    suffixes=(".jsonl.gz", ".jsonl"),
    reviews=pa.schema([
        ("user_id", pa.string()),
        ("parent_asin", pa.string()),
        ("rating", pa.float32()),
        ("timestamp", pa.int64()),
    ]),
    review_record=_review_record,
    meta=pa.schema([
        ("parent_asin", pa.string()),
        ("title", pa.string()),
        ("categories", pa.list_(pa.string())),
        ("main_category", pa.string()),
        ("store", pa.string()),
    ]),
    meta_record=_meta_record,
    meta_key="parent_asin",
    items_of=_items_of,
    time_divisor=1000,
)


def load_amazon2023(folder: Path) -> CanonicalTables:
    from distrec.data.loaders.amazon import AMAZON_2018

    return load_release(folder, AMAZON_2023, others=(AMAZON_2018,))
