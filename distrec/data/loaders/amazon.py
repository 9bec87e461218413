"""Loader for one category of Amazon Reviews 2018 (Ni, Li & McAuley, EMNLP 2019).

The folder holds the category's reviews ``<Category>.json.gz`` (or the 5-core
``<Category>_5.json.gz``) and its metadata ``meta_<Category>.json.gz``, one JSON object per
line. We read ``reviewerID``, ``asin``, ``overall`` (1-5 stars) and ``unixReviewTime`` from
reviews, and ``asin``, ``title``, ``category`` (list) and ``brand`` from metadata; ``brand``
goes to ``publisher``, a missing title to "" (``prepare`` drops such items). The decisions
shared with the 2023 release (ids, repeats, unknown ASINs) are in ``_amazon.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from distrec.data.loaders._amazon import AMAZON_SCALE, Release, load_release, string_list, string_or_none
from distrec.data.loaders._jsonl import number, text, whole
from distrec.data.schema import CanonicalTables

__all__ = ["AMAZON_2018", "AMAZON_SCALE", "load_amazon"]


def _review_record(r: dict[str, Any]) -> tuple[Any, ...]:
    return (
        text(r.get("reviewerID"), "reviewerID"),
        text(r.get("asin"), "asin"),
        number(r.get("overall"), "overall"),
        whole(r.get("unixReviewTime"), "unixReviewTime"),
    )


def _meta_record(r: dict[str, Any]) -> tuple[Any, ...]:
    """Metadata is descriptive, so only ``asin`` is strict; odd other fields are coerced."""
    title = r.get("title")
    brand = r.get("brand")
    return (
        text(r.get("asin"), "asin"),
        "" if title is None else string_or_none(title),
        string_list(r.get("category")),
        brand if isinstance(brand, str) else None,
    )


def _items_of(meta: pa.Table) -> tuple[pa.Array, list, pa.Array]:
    return pc.fill_null(meta.column("title"), ""), meta.column("category").to_pylist(), meta.column("brand")


AMAZON_2018 = Release(
    name="Amazon Reviews 2018",
    dataset="amazon",
    suffixes=(".json.gz", ".json"),
    reviews=pa.schema([
        ("reviewerID", pa.string()),
        ("asin", pa.string()),
        ("overall", pa.float32()),
        ("unixReviewTime", pa.int64()),
    ]),
    review_record=_review_record,
    meta=pa.schema([
        ("asin", pa.string()),
        ("title", pa.string()),
        ("category", pa.list_(pa.string())),
        ("brand", pa.string()),
    ]),
    meta_record=_meta_record,
    meta_key="asin",
    items_of=_items_of,
)


def load_amazon(folder: Path) -> CanonicalTables:
    from distrec.data.loaders.amazon2023 import AMAZON_2023

    return load_release(folder, AMAZON_2018, others=(AMAZON_2023,))
