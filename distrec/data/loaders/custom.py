"""Loader for your own logs: the ``custom`` dataset, one documented canonical input.

The folder holds up to three files, each as Parquet or CSV (comma-separated, header line,
double quotes allowed): ``interactions.parquet|csv``, ``items.parquet|csv`` and, optionally,
``users.parquet|csv``. Columns (extra columns are ignored):

- ``interactions``: ``user_id``, ``item_id``, ``timestamp`` and, by ``data.label_rule``:
  ``rating`` (``threshold``), ``label`` 0/1 (``column``) or nothing more (``implicit``).
  ``timestamp`` is unix seconds (an integer), a Parquet timestamp/date column (sub-second
  parts dropped), or ISO 8601 text ("2021-03-04", "2021-03-04T10:00:00", "...+02:00"; text
  without an offset is read as UTC; forms may be mixed, at a slower per-value read).
- ``items``: ``item_id``, ``title``; optional ``categories`` (or ``genres``: a list column,
  or text split on ``|``), ``year``, ``author``, ``publisher`` (or ``brand``).
- ``users``: ``user_id``; optional ``gender``, ``age``, ``occupation``, ``zip``, ``location``.

Decisions:

- Ids may be integers or strings. Each becomes a dense int64 id in sorted key order (numeric
  order when every key of that kind is a plain integer, else text order), so the same files
  always give the same ids; ``source_id`` keeps the original key as text.
- The canonical ``rating`` is the file's rating (``threshold``), its 0/1 label (``column``),
  or 1.0 for every interaction (``implicit``); ``distrec.data.prepare`` derives the labels.
- Without a users file, every user of the interactions gets an empty profile.
- Bad input stops the load with a DataError naming the file and the line (CSV) or 0-based row
  (Parquet): a missing file or column, an empty id or title, a NaN, missing or unreadable
  rating, label or timestamp, a label other than 0/1, a repeated item or user id, an item
  or user id the items/users file lacks, a repeated (user, item, timestamp) interaction.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distrec.data.loaders._checks import check_known, check_unique, finish
from distrec.data.loaders._fields import nulls, split_list
from distrec.data.loaders._io import (
    Col,
    Format,
    Lines,
    Rows,
    cast_strings,
    read_delimited,
    read_header,
)
from distrec.data.schema import CanonicalTables
from distrec.errors import DataError

SUFFIXES = ("parquet", "csv")
LABEL_COLUMNS = {"threshold": ["rating"], "column": ["label"], "implicit": []}
_CSV = Format(",", header=True, quoted=True)
_INT_KEY = r"^-?(0|[1-9][0-9]*)$"
_INT_TEXT = r"^\s*-?[0-9]+\s*$"


def load_custom(folder: Path, label_rule: str = "threshold") -> CanonicalTables:
    """The canonical tables of the files in ``folder`` (see the module docstring)."""
    if label_rule not in LABEL_COLUMNS:
        raise DataError(f"data.label_rule must be one of {sorted(LABEL_COLUMNS)}, got {label_rule!r}")
    inter_path, items_path = find_file(folder, "interactions"), find_file(folder, "items")
    users_path = find_file(folder, "users", required=False)

    raw_items, item_rows = read_table(
        items_path, ["item_id", "title"], ["categories", "genres", "year", "author", "publisher", "brand"])
    item_keys = keys(raw_items.column("item_id"), item_rows, "item_id")
    check_unique(pa.table({"item_id": item_keys}), ["item_id"], item_rows, "item id")

    raw, rows = read_table(inter_path, ["user_id", "item_id", "timestamp", *LABEL_COLUMNS[label_rule]])
    inter_items = keys(raw.column("item_id"), rows, "item_id")
    inter_users = keys(raw.column("user_id"), rows, "user_id")
    check_known(inter_items, item_keys, rows, "item_id", items_path.name)

    if users_path is not None:
        raw_users, user_rows = read_table(users_path, ["user_id"], ["gender", "age", "occupation", "zip", "location"])
        user_keys = keys(raw_users.column("user_id"), user_rows, "user_id")
        check_unique(pa.table({"user_id": user_keys}), ["user_id"], user_rows, "user id")
        check_known(inter_users, user_keys, rows, "user_id", users_path.name)
    else:
        raw_users, user_rows, user_keys = None, None, pc.unique(inter_users)

    item_order, item_sorted = sorted_keys(item_keys)
    user_order, user_sorted = sorted_keys(user_keys)
    inter = pa.table({
        "user_id": pc.cast(pc.index_in(inter_users, value_set=user_sorted), pa.int64()),
        "item_id": pc.cast(pc.index_in(inter_items, value_set=item_sorted), pa.int64()),
        "rating": _rating(raw, rows, label_rule),
        "timestamp": timestamps(raw.column("timestamp"), rows),
    })
    check_unique(inter, ["user_id", "item_id", "timestamp"], rows, "interaction")
    items = _items(raw_items, item_rows, item_keys).take(item_order)
    if raw_users is None:
        users = _users(pa.table({"user_id": user_keys}), Lines(inter_path, 2), user_keys)
    else:
        users = _users(raw_users, user_rows, user_keys)
    users = users.take(user_order)
    items = items.set_column(0, "item_id", pa.array(range(items.num_rows), pa.int64()))
    users = users.set_column(0, "user_id", pa.array(range(users.num_rows), pa.int64()))
    return finish(inter, items, users, str(folder))


def find_file(folder: Path, name: str, required: bool = True) -> Path | None:
    """``folder/<name>.parquet`` or ``.csv``; DataError naming the folder's files if absent."""
    found = [folder / f"{name}.{s}" for s in SUFFIXES if (folder / f"{name}.{s}").is_file()]
    if len(found) > 1:
        raise DataError(f"{folder}: both {found[0].name} and {found[1].name}; keep one of them")
    if not found:
        if not required:
            return None
        entries = sorted(p.name for p in folder.iterdir())
        raise DataError(f"{folder}: {name}.parquet or {name}.csv not found (dataset 'custom'); "
                        f"found {entries or 'an empty folder'}")
    return found[0]


def read_table(path: Path, required: Sequence[str], optional: Sequence[str] = ()) -> tuple[pa.Table, Lines]:
    """The ``required`` columns and those of ``optional`` present; CSV values come as text.

    Returns the table and the map from its rows to the file's lines (CSV) or rows (Parquet).
    """
    if path.suffix == ".csv":
        header = read_header(path, _CSV)
        names = [*required, *(c for c in optional if c in header)]
        return read_delimited(path, [Col(n) for n in names], _CSV)
    try:
        parquet = pq.ParquetFile(path)
        present = parquet.schema_arrow.names
        missing = [c for c in required if c not in present]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; the file has {present}")
        table = parquet.read(columns=[*required, *(c for c in optional if c in present)])
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: cannot read as Parquet: {exc}") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    return table, Rows(path)


def _first(mask: pa.ChunkedArray | pa.Array) -> int | None:
    mask = pc.fill_null(mask, True)
    return pc.index(mask, True).as_py() if pc.any(mask).as_py() else None


def keys(col: pa.ChunkedArray, rows: Lines, name: str) -> pa.Array:
    """An id column (integers or text) as trimmed text; DataError on an empty or non-id value."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if not (pa.types.is_integer(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise DataError(f"{rows.path}: column '{name}' has type {col.type}; ids must be integers or text")
    text = pc.utf8_trim_whitespace(pc.cast(col, pa.string())).combine_chunks()
    bad = _first(pc.equal(text, ""))
    if bad is not None:
        raise DataError(f"{rows.at(bad)}: column '{name}' is empty")
    return text


def sorted_keys(key_text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(positions sorting the distinct ``key_text``, the sorted keys): numeric order when every
    key is a plain integer ("7", not "07"), else text order."""
    if len(key_text) and pc.all(pc.match_substring_regex(key_text, _INT_KEY)).as_py():
        order = pc.sort_indices(pc.cast(key_text, pa.int64()))
    else:
        order = pc.sort_indices(key_text)
    return order, pc.take(key_text, order)


def numbers(col: pa.ChunkedArray, rows: Lines, name: str) -> pa.Array:
    """A numeric column (or text of numbers) as float64; DataError on a missing, NaN, infinite
    or unreadable value."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        col = cast_strings(pa.table({name: pc.cast(col, pa.string())}), [Col(name, pa.float64())], rows).column(name)
    elif not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_boolean(col.type)):
        raise DataError(f"{rows.path}: column '{name}' has type {col.type}; expected numbers")
    values = pc.cast(col, pa.float64()).combine_chunks()
    for problem, mask in (("missing", pc.is_null(values)), ("NaN", pc.is_nan(values)),
                          ("infinite", pc.is_inf(values))):
        bad = _first(mask)
        if bad is not None:
            raise DataError(f"{rows.at(bad)}: column '{name}' is {problem}")
    return values


def _rating(raw: pa.Table, rows: Lines, label_rule: str) -> pa.Array:
    if label_rule == "implicit":
        return pa.array(np.ones(raw.num_rows, dtype=np.float32))
    if label_rule == "threshold":
        return pc.cast(numbers(raw.column("rating"), rows, "rating"), pa.float32())
    labels = numbers(raw.column("label"), rows, "label")
    bad = _first(pc.invert(pc.is_in(labels, value_set=pa.array([0.0, 1.0]))))
    if bad is not None:
        raise DataError(f"{rows.at(bad)}: column 'label' must be 0 or 1, found {labels[bad].as_py():g}")
    return pc.cast(labels, pa.float32())


def timestamps(col: pa.ChunkedArray, rows: Lines) -> pa.Array:
    """Unix seconds (int64) from integers, whole floats, Parquet timestamps/dates or text."""
    name = "timestamp"
    bad = _first(pc.is_null(col))
    if bad is not None:
        raise DataError(f"{rows.at(bad)}: column '{name}' is missing")
    kind = col.type
    if pa.types.is_integer(kind):
        return pc.cast(col, pa.int64()).combine_chunks()
    if pa.types.is_floating(kind):
        values = numbers(col, rows, name)
        bad = _first(pc.not_equal(pc.floor(values), values))
        if bad is not None:
            raise DataError(f"{rows.at(bad)}: column '{name}': {values[bad].as_py()!r} is not a whole number of seconds")
        return pc.cast(values, pa.int64())
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        seconds = pc.cast(col, pa.timestamp("s", tz=getattr(kind, "tz", None)), safe=False)
        return pc.cast(seconds, pa.int64()).combine_chunks()
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{rows.path}: column '{name}' has type {kind}; expected unix seconds or a timestamp")
    text = pc.utf8_trim_whitespace(pc.cast(col, pa.string())).combine_chunks()
    bad = _first(pc.equal(text, ""))
    if bad is not None:
        raise DataError(f"{rows.at(bad)}: column '{name}' is empty")
    if pc.all(pc.match_substring_regex(text, _INT_TEXT)).as_py():
        return pc.cast(text, pa.int64())
    for target in (pa.timestamp("s"), pa.timestamp("s", tz="UTC")):
        try:
            return pc.cast(pc.cast(text, target), pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    seconds = []  # mixed forms: one value at a time
    for row, value in enumerate(text.to_pylist()):
        second = _read_time(value)
        if second is None:
            raise DataError(f"{rows.at(row)}: column '{name}': cannot read {value!r} as a timestamp "
                            "(unix seconds or ISO 8601)")
        seconds.append(second)
    return pa.array(seconds, pa.int64())


def _read_time(value: str) -> int | None:
    """Unix seconds of one text value, or None when it is neither an integer nor ISO 8601."""
    if re.match(_INT_TEXT, value):
        return int(value)
    for target in (pa.timestamp("s"), pa.timestamp("s", tz="UTC")):
        try:
            return pc.cast(pc.cast(pa.array([value]), target), pa.int64())[0].as_py()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return None


def _text(table: pa.Table, *names: str) -> pa.Array:
    """The first of ``names`` present, as trimmed text with blanks as nulls; all nulls if none."""
    for name in names:
        if name in table.column_names:
            text = pc.utf8_trim_whitespace(pc.cast(table.column(name), pa.string())).combine_chunks()
            return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    return nulls(table.num_rows)


def _small_int(table: pa.Table, name: str, rows: Lines) -> pa.Array:
    """An optional integer field (year, age): blanks and NaN become null."""
    if name not in table.column_names:
        return nulls(table.num_rows, pa.int32())
    col = table.column(name)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return cast_strings(pa.table({name: col}), [Col(name, pa.int32(), nullable=True)], rows).column(name)
    if pa.types.is_floating(col.type):
        col = pc.if_else(pc.is_nan(col), pa.scalar(None, col.type), col)
    try:
        return pc.cast(col, pa.int32())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{rows.path}: column '{name}': cannot read as whole numbers: {exc}") from None


def _categories(table: pa.Table) -> pa.Array:
    for name in ("categories", "genres"):
        if name not in table.column_names:
            continue
        col = table.column(name).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            joined = pc.binary_join(pc.cast(col, pa.list_(pa.string())), "|")
            return split_list(joined, "|")
        return split_list(pc.cast(col, pa.string()), "|")
    return pa.array([[]] * table.num_rows, pa.list_(pa.string()))


def _items(raw: pa.Table, rows: Lines, source_ids: pa.Array) -> pa.Table:
    """Canonical items of ``raw``, in file order (ids set later); DataError on an empty title."""
    title = _text(raw, "title")
    bad = _first(pc.is_null(title))
    if bad is not None:
        raise DataError(f"{rows.at(bad)}: column 'title' is empty")
    return pa.table({
        "item_id": pa.nulls(raw.num_rows, pa.int64()),
        "title": title,
        "categories": _categories(raw),
        "year": _small_int(raw, "year", rows),
        "author": _text(raw, "author"),
        "publisher": _text(raw, "publisher", "brand"),
        "source_id": source_ids,
    })


def _users(raw: pa.Table, rows: Lines, source_ids: pa.Array) -> pa.Table:
    """Canonical users of ``raw``, in its order (ids set later); profile fields may be absent."""
    return pa.table({
        "user_id": pa.nulls(raw.num_rows, pa.int64()),
        "gender": _text(raw, "gender"),
        "age": _small_int(raw, "age", rows),
        "occupation": _text(raw, "occupation"),
        "zip": _text(raw, "zip"),
        "location": _text(raw, "location"),
        "source_id": source_ids,
    })


__all__ = ["load_custom"]
