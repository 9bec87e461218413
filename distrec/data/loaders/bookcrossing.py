"""Loader for the Book-Crossing dataset (Ziegler et al. 2005), the official CSV dump.

``BX-Book-Ratings.csv``, ``BX-Books.csv`` and ``BX-Users.csv`` are ``;``-separated,
every field double-quoted, latin-1, with MySQL-style backslash escapes. Decisions this
loader makes, because the official files force them:

- No timestamps exist. Each rating gets a deterministic pseudo-timestamp: its 0-based row
  position in ``BX-Book-Ratings.csv``. The sample builder orders histories by timestamp, so
  BookCrossing histories follow file order.
- Rating 0 is an implicit interaction and is kept (rating 0.0); explicit ratings are 1-10.
- ISBNs become int64 item ids in sorted ISBN order; ``source_id`` keeps the ISBN.
- The official ratings file rates many ISBNs that ``BX-Books.csv`` lacks. Those ratings are
  dropped and counted (logged, and kept in the interactions metadata, see
  ``distrec.data.loaders.dropped_rows``). A user id missing from ``BX-Users.csv`` is an error.
- A few lines of the official ``BX-Books.csv`` have a wrong number of fields; they are
  skipped and counted the same way.
- ``location`` ("city, state, country") keeps the country only. Ages are kept as written,
  "NULL" becomes null. Titles lose their HTML entities ("&amp;" -> "&").
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from distrec.data.loaders._checks import (
    check_known,
    check_ratings,
    check_unique,
    finish,
)
from distrec.data.loaders._fields import (
    dense_ids,
    four_digit_year,
    int_strings,
    nulls,
    unescape,
)
from distrec.data.loaders._io import (
    Col,
    Format,
    cast_strings,
    read_delimited,
    require_file,
)
from distrec.data.schema import CanonicalTables

BX_SCALE = (0.0, 10.0)
_BX = Format(";", header=True, encoding="latin-1", quoted=True, escape_char="\\")
_NOT_A_COUNTRY = ("", "n/a", "na", "none", "null", "unknown")


def load_bookcrossing(folder: Path) -> CanonicalTables:
    ratings, rating_lines = read_delimited(
        require_file(folder, "BX-Book-Ratings.csv"),
        [Col("User-ID", pa.int64()), Col("ISBN"), Col("Book-Rating", pa.float32())],
        _BX,
    )
    check_ratings(ratings.column("Book-Rating"), *BX_SCALE, rating_lines)
    items, skipped_books = _books(folder)
    users = _users(folder)
    check_known(ratings.column("User-ID"), users.column("user_id"), rating_lines, "user id",
                "BX-Users.csv")

    item_ids = pc.cast(pc.index_in(ratings.column("ISBN"), value_set=items.column("source_id")),
                       pa.int64())
    known = pc.is_valid(item_ids)
    inter = pa.table({
        "user_id": ratings.column("User-ID"),
        "item_id": item_ids,
        "rating": ratings.column("Book-Rating"),
        "timestamp": pa.array(range(ratings.num_rows), pa.int64()),
    }).filter(known)
    dropped = {
        "ratings of ISBNs missing from BX-Books.csv": ratings.num_rows - inter.num_rows,
        "BX-Books.csv lines with a wrong number of fields": skipped_books,
    }
    return finish(inter, items, users, str(folder), dropped)


def _books(folder: Path) -> tuple[pa.Table, int]:
    """Canonical items in sorted ISBN order, and how many malformed lines were skipped."""
    raw, lines = read_delimited(
        require_file(folder, "BX-Books.csv"),
        [Col("ISBN"), Col("Book-Title"), Col("Book-Author"), Col("Year-Of-Publication"),
         Col("Publisher")],
        _BX,
        skip_bad_rows=True,
    )
    check_unique(raw, ["ISBN"], lines, "ISBN")
    isbns, ids = dense_ids(raw.column("ISBN"))
    raw = raw.take(pc.sort_indices(ids))
    year = four_digit_year(raw.column("Year-Of-Publication"))
    year = pc.if_else(pc.greater(year, 0), year, None)
    n = raw.num_rows
    items = pa.table({
        "item_id": pa.array(range(n), pa.int64()),
        "title": unescape(raw.column("Book-Title")),
        "categories": pa.array([[]] * n, pa.list_(pa.string())),
        "year": year,
        "author": unescape(raw.column("Book-Author")),
        "publisher": unescape(raw.column("Publisher")),
        "source_id": isbns,
    })
    return items, len(lines.skipped)


def _users(folder: Path) -> pa.Table:
    raw, lines = read_delimited(
        require_file(folder, "BX-Users.csv"),
        [Col("User-ID", pa.int64()), Col("Location"), Col("Age")],
        _BX,
    )
    check_unique(raw, ["User-ID"], lines, "user id")
    age_text = raw.column("Age")
    age_text = pc.if_else(pc.equal(pc.utf8_upper(age_text), "NULL"), "", age_text)
    age = cast_strings(pa.table({"Age": age_text}), [Col("Age", pa.int32(), nullable=True)],
                       lines).column("Age")
    n = raw.num_rows
    return pa.table({
        "user_id": raw.column("User-ID"), "gender": nulls(n), "age": age,
        "occupation": nulls(n), "zip": nulls(n), "location": country(raw.column("Location")),
        "source_id": int_strings(raw.column("User-ID")),
    })


def country(locations: pa.ChunkedArray | pa.Array) -> pa.Array:
    """The last comma-separated part of "city, state, country", cleaned; null if none."""
    last = pc.struct_field(pc.extract_regex(locations, r"(?P<c>[^,]*)$"), "c")
    last = pc.utf8_trim(last, characters=" \t.\"'")
    return pc.if_else(pc.is_in(pc.utf8_lower(last), value_set=pa.array(_NOT_A_COUNTRY)),
                      None, last)
