"""One short text per catalogue item, the input of the SUBR item encoder.

ReLLa encodes each item as a templated sentence (title and first genre for movies; title,
ISBN, author, year and publisher for books; methods.md §3.4 item 1). distrec uses its own
wording, built only from the canonical ``items`` columns (``distrec.data.schema.ITEMS``):

- movies: ``"Movie: Toy Story (1995). Genres: Animation, Children's, Comedy."``
  (``genres="first"`` keeps only the first listed genre, as ReLLa does);
- books: ``"Book: The Hobbit. Author: J. R. R. Tolkien. Published in 1937 by Allen & Unwin."``
  (the ISBN is left out: an opaque code only adds noise to a semantic encoder);
- anything else (Amazon): ``"Item: <title>. Categories: a, b."``.

Missing fields are simply omitted, never rendered as "None". :func:`item_texts` writes each
item's title as :func:`distrec.data.titles.display_titles` does for prompts, so items whose
titles collide stay apart ("Item: USB Cable (Anker).") and every path names an item alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from distrec.data.titles import display_titles
from distrec.errors import DataError

ItemKind = Literal["movie", "book", "item"]
_KIND_BY_DATASET: Mapping[str, ItemKind] = {
    "ml-100k": "movie",
    "ml-1m": "movie",
    "ml-25m": "movie",
    "movielens": "movie",
    "bookcrossing": "book",
}


def item_kind(dataset: str | None) -> ItemKind:
    """``movie`` for MovieLens datasets, ``book`` for BookCrossing, else ``item``."""
    name = (dataset or "").lower()
    if name in _KIND_BY_DATASET:
        return _KIND_BY_DATASET[name]
    if name.startswith("ml-"):
        return "movie"
    return "item"


def _clean(value: Any) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).split())
    return text or None


def _year(value: Any) -> int | None:
    try:
        year = int(value)
    except (TypeError, ValueError):
        return None
    return year if year > 0 else None


def item_text(row: Mapping[str, Any], kind: ItemKind = "item", genres: Literal["all", "first"] = "all") -> str:
    """The text of one item row (a dict with the canonical ``items`` columns)."""
    title = _clean(row.get("title"))
    if title is None:
        raise DataError(f"item_id {row.get('item_id')}: empty title, cannot build its text")
    cats = [c for c in (_clean(x) for x in (row.get("categories") or [])) if c]
    if genres == "first":
        cats = cats[:1]
    year = _year(row.get("year"))
    if kind == "movie":
        text = f"Movie: {title}"
        if year is not None and f"({year})" not in title:
            text += f" ({year})"
        text += "."
        if cats:
            text += f" {'Genre' if len(cats) == 1 else 'Genres'}: {', '.join(cats)}."
        return text
    if kind == "book":
        text = f"Book: {title}."
        author = _clean(row.get("author"))
        publisher = _clean(row.get("publisher"))
        if author:
            text += f" Author: {author}."
        if year is not None and publisher:
            text += f" Published in {year} by {publisher}."
        elif year is not None:
            text += f" Published in {year}."
        elif publisher:
            text += f" Published by {publisher}."
        return text
    text = f"Item: {title}."
    if cats:
        text += f" Categories: {', '.join(cats)}."
    return text


def item_texts(
    items: pa.Table, dataset: str | None = None, genres: Literal["all", "first"] = "all"
) -> tuple[np.ndarray, list[str]]:
    """``(item_ids int64 [n], texts)`` for every row of the ``items`` table, in item_id order.

    Titles are the display titles (:func:`distrec.data.titles.display_titles`).
    """
    if "item_id" not in items.column_names or "title" not in items.column_names:
        raise DataError(f"items table: needs item_id and title columns; found {items.column_names}")
    kind = item_kind(dataset)
    rows = items.to_pylist()
    ids = np.asarray([int(r["item_id"]) for r in rows], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    if ids.size and np.any(np.diff(ids[order]) == 0):
        dup = ids[order][np.flatnonzero(np.diff(ids[order]) == 0)[0]]
        raise DataError(f"items table: item_id {dup} occurs more than once")
    shown = display_titles(items)
    texts = [item_text({**rows[i], "title": shown[int(ids[i])]}, kind, genres) for i in order]
    return ids[order], texts
