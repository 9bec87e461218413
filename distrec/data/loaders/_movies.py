"""Canonical items and users tables built from MovieLens-style columns.

Shared by the GroupLens loaders (``movielens.py``) and the RecBole copy of ML-100K
(``recbole.py``), so both layouts of the same data give identical tables.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from distrec.data.loaders._checks import check_unique
from distrec.data.loaders._fields import int_strings, nulls, split_title_year
from distrec.data.loaders._io import Col, Lines

ML_SCALE = (1.0, 5.0)

# Columns of a MovieLens ratings file, in file order.
RATING_COLS = (
    Col("user_id", pa.int64()),
    Col("item_id", pa.int64()),
    Col("rating", pa.float32()),
    Col("timestamp", pa.int64()),
)


def movie_items(
    raw: pa.Table, lines: Lines, genres: pa.Array, fallback_year: pa.Array | None = None
) -> pa.Table:
    """Canonical items from MovieLens ids, "Title (Year)" titles and genre lists."""
    check_unique(raw, ["item_id"], lines, "item id")
    title, year = split_title_year(raw.column("title"))
    if fallback_year is not None:
        year = pc.coalesce(year, fallback_year)
    n = raw.num_rows
    return pa.table({
        "item_id": raw.column("item_id"), "title": title, "categories": genres, "year": year,
        "author": nulls(n), "publisher": nulls(n), "source_id": int_strings(raw.column("item_id")),
    })


def ml_users(raw: pa.Table, lines: Lines) -> pa.Table:
    """Canonical users from a table with user_id, gender, age, occupation, zip."""
    check_unique(raw, ["user_id"], lines, "user id")
    return pa.table({
        "user_id": raw.column("user_id"), "gender": raw.column("gender"),
        "age": raw.column("age"), "occupation": raw.column("occupation"),
        "zip": raw.column("zip"), "location": nulls(raw.num_rows),
        "source_id": int_strings(raw.column("user_id")),
    })
