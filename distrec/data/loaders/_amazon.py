"""What the Amazon Reviews releases share: one category per folder, reviews + metadata as
gzip'd JSON lines, string keys for items and users.

A :class:`Release` names its files and fields; :func:`load_release` reads one category into
the canonical tables. Decisions, the same for every release:

- Item keys (ASIN, or ``parent_asin`` in 2023) become int64 item ids in sorted key order over
  the metadata; user keys become int64 user ids in sorted order; ``source_id`` keeps the key.
- The maker (``brand`` / ``store``) goes to ``publisher``; ``author`` and ``year`` stay null.
- Metadata repeating a key: the first record wins, the rest are counted.
- Reviews that repeat an earlier review exactly (same user, item, time and rating) are dropped
  and counted; two different ratings at the same (user, item, time) are an error, and so is a
  review of an item the metadata lacks. Times are compared at the file's resolution (ms in
  2023) before they become whole seconds.
- Titles are taken as given (entities decoded); cleaning and dropping bad titles is
  ``prepare``'s job for every dataset (``distrec.data.titles``).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from distrec.data.loaders._checks import check_known, check_ratings, check_unique, finish
from distrec.data.loaders._fields import dense_ids, nulls, unescape
from distrec.data.loaders._io import Lines, require_present
from distrec.data.loaders._jsonl import Converter, read_json_lines
from distrec.data.schema import CanonicalTables
from distrec.errors import DataError

AMAZON_SCALE = (1.0, 5.0)
_SHOWN_NAMES = 20  # folder entries named in an error


@dataclass(frozen=True)
class Release:
    """One release's layout.

    ``reviews``: schema of the review fields read, in the order user, item, rating, time.
    ``meta``: schema of the metadata fields read; ``meta_key`` is the item key among them.
    ``items_of(meta) -> (title, categories, maker)`` columns from the metadata table.
    ``time_divisor``: review times are divided by it to give unix seconds (1000 for ms).
    """

    name: str
    dataset: str
    suffixes: tuple[str, ...]
    reviews: pa.Schema
    review_record: Converter
    meta: pa.Schema
    meta_record: Converter
    meta_key: str
    items_of: Callable[[pa.Table], tuple[pa.Array, list, pa.Array]]
    time_divisor: int = 1


def load_release(folder: Path, release: Release, others: tuple[Release, ...] = ()) -> CanonicalTables:
    """The canonical tables of the one category in ``folder`` (see the module docstring)."""
    reviews_path, meta_path = find_files(folder, release, others)
    raw = read_json_lines(reviews_path, release.reviews, release.review_record)
    lines = Lines(reviews_path, 1)
    require_present(raw, release.reviews.names, lines)
    user_col, item_col, rating_col, time_col = release.reviews.names
    check_ratings(raw.column(rating_col), *AMAZON_SCALE, lines)
    items, repeated_keys = _items(meta_path, release)
    check_known(raw.column(item_col), items.column("source_id"), lines, item_col, meta_path.name)

    raw, lines, repeated_reviews = _drop_exact_repeats(raw, lines)
    users, user_ids = dense_ids(raw.column(user_col))
    inter = pa.table({
        "user_id": user_ids,
        "item_id": pc.cast(pc.index_in(raw.column(item_col), value_set=items.column("source_id")), pa.int64()),
        "rating": raw.column(rating_col),
        "timestamp": raw.column(time_col),
    })
    # Checked at the file's own time resolution: two reviews a few ms apart are two reviews.
    check_unique(inter, ["user_id", "item_id", "timestamp"], lines, "review with a different rating")
    if release.time_divisor != 1:  # integer division: whole unix seconds
        inter = inter.set_column(3, "timestamp", pc.divide(inter.column("timestamp"), release.time_divisor))
    n = len(users)
    user_table = pa.table({
        "user_id": pa.array(range(n), pa.int64()), "gender": nulls(n),
        "age": nulls(n, pa.int32()), "occupation": nulls(n), "zip": nulls(n),
        "location": nulls(n), "source_id": users,
    })
    dropped = {
        f"exact repeats of an earlier review in {reviews_path.name}": repeated_reviews,
        f"repeated {release.meta_key} records in {meta_path.name} (first kept)": repeated_keys,
    }
    return finish(inter, items, user_table, str(folder), dropped)


def _matches(name: str, release: Release) -> bool:
    return name.endswith(release.suffixes)


def find_files(folder: Path, release: Release, others: tuple[Release, ...] = ()) -> tuple[Path, Path]:
    """The reviews file and the metadata file of the one category in ``folder``.

    Raises DataError naming what the folder holds, the file that is missing, and the loader
    of another release whose files are there instead.
    """
    entries = sorted(p.name for p in folder.iterdir())
    found = [folder / n for n in entries if _matches(n, release) and (folder / n).is_file()]
    meta = [p for p in found if p.name.startswith("meta_")]
    reviews = [p for p in found if not p.name.startswith("meta_")]
    if len(meta) == 1 and len(reviews) == 1:
        return reviews[0], meta[0]
    suffix = release.suffixes[0]
    shown = entries[:_SHOWN_NAMES] + ([f"... {len(entries) - _SHOWN_NAMES} more"] if len(entries) > _SHOWN_NAMES else [])
    message = (f"{folder}: expected one reviews file '<Category>{suffix}' and its metadata file "
               f"'meta_<Category>{suffix}' ({release.name}); found {shown or 'an empty folder'}")
    if len(reviews) == 1 and not meta:
        stem = reviews[0].name[: -len(next(s for s in release.suffixes if reviews[0].name.endswith(s)))]
        message += f"; missing meta_{stem}{suffix}"
    elif len(meta) > 1 or len(reviews) > 1:
        message += "; the folder holds several categories, keep one per folder"
    for other in others:
        if any(_matches(n, other) for n in entries):
            message += (f". Files like {[n for n in entries if _matches(n, other)][:2]} are {other.name}: "
                        f"read them with the '{other.dataset}' dataset (`distrec data prepare {other.dataset}`)")
    raise DataError(message)


def _items(meta_path: Path, release: Release) -> tuple[pa.Table, int]:
    """Canonical items in sorted key order (first record per key), and the repeat count."""
    meta = read_json_lines(meta_path, release.meta, release.meta_record)
    key = release.meta_key
    require_present(meta, [key], Lines(meta_path, 1))
    total = meta.num_rows
    meta = meta.append_column("__row", pa.array(range(total), pa.int64()))
    first = meta.group_by(key).aggregate([("__row", "min")]).column("__row_min")
    meta = meta.take(first)  # the first record of each key
    meta = meta.take(pc.sort_indices(meta.column(key)))
    title, categories, maker = release.items_of(meta)
    n = meta.num_rows
    categories = [
        [u for u in (html.unescape(c).strip() for c in cats or [] if c) if u]
        for cats in categories
    ]
    items = pa.table({
        "item_id": pa.array(range(n), pa.int64()),
        "title": unescape(title),
        "categories": pa.array(categories, pa.list_(pa.string())),
        "year": nulls(n, pa.int32()),
        "author": nulls(n),
        "publisher": unescape(maker),
        "source_id": meta.column(key),
    })
    return items, total - n


def _drop_exact_repeats(raw: pa.Table, lines: Lines) -> tuple[pa.Table, Lines, int]:
    """Drop reviews identical to an earlier one; the returned Lines still maps to the file."""
    keys = raw.column_names
    indexed = raw.append_column("__row", pa.array(range(raw.num_rows), pa.int64()))
    keep = indexed.group_by(keys).aggregate([("__row", "min")]).column("__row_min")
    if len(keep) == raw.num_rows:
        return raw, lines, 0
    keep = pc.take(keep, pc.sort_indices(keep))
    kept = pc.is_in(pa.array(range(raw.num_rows), pa.int64()), value_set=keep)
    gone = pc.indices_nonzero(pc.invert(kept)).to_pylist()
    skipped = tuple(lines.line(i) for i in gone)
    return raw.take(keep), Lines(lines.path, lines.first_line, skipped), len(gone)


def string_or_none(value) -> str | None:
    """A descriptive metadata field: strings kept, null as None, anything else as its text."""
    if value is None or isinstance(value, str):
        return value
    return str(value)


def string_list(value) -> list[str]:
    """A list-of-strings metadata field; a lone string becomes a one-item list, others []."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [str(v) for v in value if v is not None]
    return []


__all__ = ["AMAZON_SCALE", "Release", "find_files", "load_release", "string_list", "string_or_none"]
