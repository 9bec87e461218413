"""Small vectorised field transforms shared by several loaders.

MovieLens writes the year into the title ("Toy Story (1995)"); the canonical items table
keeps them apart (title "Toy Story", year 1995) so prompts can render either. String keys
(ISBNs, ASINs, Amazon reviewer ids) become int64 ids in sorted key order, so the same raw
files always give the same ids.
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_TITLE_YEAR = r"^(?P<title>.*?)\s*\((?P<year>\d{4})\)\s*$"
_YEAR_AT_END = r"(?P<year>\d{4})\s*$"


def split_title_year(titles: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, pa.Array]:
    """Split trailing "(YYYY)" off each title: (title, year or null)."""
    titles = pc.utf8_trim_whitespace(titles)
    parts = pc.extract_regex(titles, _TITLE_YEAR)
    bare = pc.coalesce(pc.struct_field(parts, "title"), titles)
    year = pc.cast(pc.struct_field(parts, "year"), pa.int32())
    return bare, year


def year_at_end(texts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The 4-digit year ending each text ("01-Jan-1995" -> 1995), else null."""
    parts = pc.extract_regex(texts, _YEAR_AT_END)
    return pc.cast(pc.struct_field(parts, "year"), pa.int32())


def four_digit_year(texts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Texts that are exactly a 4-digit year as int32; anything else (e.g. "V") -> null."""
    return year_at_end(pc.if_else(pc.match_substring_regex(texts, r"^\s*\d{4}\s*$"), texts, None))


def split_list(texts: pa.ChunkedArray | pa.Array, sep: str, drop: Sequence[str] = ()) -> pa.Array:
    """Split each text on ``sep`` into a list, dropping empty parts and the ``drop`` values."""
    parts = pc.split_pattern(pc.fill_null(texts, ""), sep)
    if isinstance(parts, pa.ChunkedArray):
        parts = parts.combine_chunks()
    flat = pc.utf8_trim_whitespace(pc.list_flatten(parts))
    parents = pc.list_parent_indices(parts)
    keep = pc.and_(pc.not_equal(flat, ""),
                   pc.invert(pc.is_in(flat, value_set=pa.array(list(drop), pa.string()))))
    flat, parents = flat.filter(keep), parents.filter(keep)
    counts = np.bincount(parents.to_numpy(), minlength=len(parts))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat)


def unescape(texts: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Decode HTML entities ("&amp;" -> "&"), as found in BookCrossing and Amazon text."""
    return pa.array(
        [None if t is None else html.unescape(t) for t in texts.to_pylist()], pa.string()
    )


def dense_ids(keys: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, pa.Array]:
    """Assign int64 ids to string keys in sorted order.

    Returns (sorted distinct keys, id of each input key); the id of a key is its position in
    the sorted distinct keys.
    """
    distinct = pc.unique(keys)
    distinct = pc.take(distinct, pc.sort_indices(distinct))
    ids = pc.cast(pc.index_in(keys, value_set=distinct), pa.int64())
    return distinct, ids


def nulls(n: int, type_: pa.DataType = pa.string()) -> pa.Array:
    return pa.nulls(n, type_)


def int_strings(ids: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Integer ids as their decimal strings (the canonical ``source_id``)."""
    return pc.cast(ids, pa.string())
