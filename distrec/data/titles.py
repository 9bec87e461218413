"""Item titles: one normal form, prepare-time cleaning, and the text that stands for each item.

Every path on which a title stands for an item (CTR and generative prompts, the generative
response, grounding of generated text, SUBR item texts) goes through this module, so the same
item is written the same way everywhere and different items are written differently:

- :func:`normalise_title` is the one normal form: Unicode NFC, every whitespace run one
  space, no leading or trailing space. Catalogue titles and generated titles both pass
  through it before they are compared or embedded.
- :func:`clean_titles` runs at prepare time, for every dataset: HTML entities are decoded,
  ``<script>``/``<style>`` blocks and tags removed, and the result normalised. Items whose
  title is missing or blank, or is nothing but markup or script text (scraped Amazon pages
  hold ``<span …>`` runs and ``var aPageStart = (new Date()).getTime();``), are dropped with
  their interactions; the counts go to the manifest. No such title reaches a worker.
- :func:`display_titles` keeps colliding titles apart. A title shared by several items gets
  a qualifier: the year ("Cape Fear (1962)" / "Cape Fear (1991)") if that separates the group,
  else the maker (author, or publisher/brand: "Selected Poems (John Donne)"), else both
  (whichever separates most, first in that order). Titles that do not collide are left as
  they are ("Heat"). Items whose title, year and maker are all equal keep the bare title: no
  field tells them apart (ML-100K lists 18 films twice under two ids); grounding counts them
  as one unless ``eval.merge_duplicate_titles`` is false.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import defaultdict
from dataclasses import replace
from typing import Any, Optional

import pyarrow as pa
import pyarrow.compute as pc

from distrec.data.schema import CanonicalTables
from distrec.errors import DataError

# Manifest keys of :func:`clean_titles`' counts (all present, zeros included).
NO_TITLE = "items without a title"
MARKUP_ONLY = "items whose title is markup or script only"
CLEANED = "titles cleaned of markup"
DROPPED_INTERACTIONS = "interactions of dropped items"

_BLOCK = re.compile(r"<\s*(script|style)\b[^>]*>.*?(?:<\s*/\s*\1\s*>|$)", re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.DOTALL)
# HTML elements only, so "<<Le Petit Prince>>" or "I <3 NY" stay; an unclosed tag at the end of
# a truncated scrape counts too.
_TAG = re.compile(
    r"<\s*/?\s*(?:a|abbr|b|big|blockquote|body|br|button|center|code|div|em|font|footer|form|h[1-6]|head|"
    r"header|hr|html|i|iframe|img|input|label|li|link|meta|nav|noscript|ol|option|p|pre|s|section|select|"
    r"small|span|strike|strong|style|sub|sup|table|tbody|td|th|thead|title|tr|tt|u|ul)\b[^<>]*(?:>|$)",
    re.IGNORECASE,
)
# Statements of the page scripts scraped into titles; none of these occur in product names.
_SCRIPT_TEXT = re.compile(
    r"\bfunction\s*\(|\bvar\s+[A-Za-z_$][\w$]*\s*=|\.getTime\s*\(\s*\)|\bnew\s+Date\s*\(|"
    r"\bdocument\s*\.\s*(?:write|getElementById|createElement|cookie|location)\b|"
    r"\bwindow\s*\.\s*[A-Za-z_$][\w$]*\s*[.(=]"
)
# Cheap pre-filter: only titles holding one of these go through the full cleaning.
_SUSPECT = r"[<&]|function|var\s|getTime|new\s+Date|document|window"


def normalise_title(text: Optional[str]) -> str:
    """The one normal form of a title: NFC, whitespace runs collapsed to one space, trimmed.

    None gives "". Idempotent. Used on catalogue titles and on generated text alike.
    """
    if text is None:
        return ""
    return " ".join(unicodedata.normalize("NFC", str(text)).split())


def strip_markup(text: str) -> tuple[str, bool]:
    """``(text without HTML, whether markup was found)``: entities decoded, script/style blocks,
    comments and tags removed (each replaced by a space), then :func:`normalise_title`."""
    decoded = html.unescape(text)
    stripped = _TAG.sub(" ", _COMMENT.sub(" ", _BLOCK.sub(" ", decoded)))
    return normalise_title(stripped), stripped != decoded


def is_script_text(text: str) -> bool:
    """Whether ``text`` holds JavaScript statements (scraped page code, not a name)."""
    return _SCRIPT_TEXT.search(text) is not None


def clean_catalogue_title(text: Optional[str]) -> tuple[str, str]:
    """``(clean title, outcome)``; outcome is "", :data:`CLEANED`, :data:`NO_TITLE` or
    :data:`MARKUP_ONLY` (the last two with an empty title: the item is to be dropped)."""
    if text is None or not str(text).strip():
        return "", NO_TITLE
    cleaned, had_markup = strip_markup(str(text))
    if not cleaned:
        return "", MARKUP_ONLY if had_markup else NO_TITLE
    if is_script_text(cleaned):
        return "", MARKUP_ONLY
    return cleaned, CLEANED if had_markup else ""


def clean_titles(tables: CanonicalTables) -> tuple[CanonicalTables, dict[str, int]]:
    """Clean every item title; drop items left without one, and their interactions.

    Returns the new tables and counts by :data:`NO_TITLE`, :data:`MARKUP_ONLY`,
    :data:`CLEANED` and :data:`DROPPED_INTERACTIONS`. Titles with nothing suspect in them
    are only normalised (vectorised pre-filter, so 4M-item catalogues stay fast).
    """
    items = tables.items
    titles = items.column("title").to_pylist()
    suspect = pc.fill_null(pc.match_substring_regex(items.column("title"), _SUSPECT), True).to_pylist()
    counts = {NO_TITLE: 0, MARKUP_ONLY: 0, CLEANED: 0}
    out: list[str] = []
    keep: list[bool] = []
    for title, check in zip(titles, suspect):
        if check or title is None or not title.strip():
            title, outcome = clean_catalogue_title(title)
            if outcome:
                counts[outcome] += 1
        else:
            title = normalise_title(title)
        out.append(title)
        keep.append(bool(title))
    items = items.set_column(items.schema.get_field_index("title"), "title", pa.array(out, pa.string()))
    dropped = [i for i, k in zip(items.column("item_id").to_pylist(), keep) if not k]
    items = items.filter(pa.array(keep, pa.bool_()))
    inter = tables.interactions
    gone = pc.is_in(inter.column("item_id"), value_set=pa.array(dropped, inter.schema.field("item_id").type))
    counts[DROPPED_INTERACTIONS] = int(pc.sum(pc.cast(gone, pa.int64())).as_py() or 0)
    if counts[DROPPED_INTERACTIONS]:
        inter = inter.filter(pc.invert(gone))
    return replace(tables, items=items, interactions=inter), counts


def _maker(row: dict[str, Any]) -> Optional[str]:
    for key in ("author", "publisher"):
        value = normalise_title(row.get(key))
        if value:
            return value
    return None


def _year(value: Any) -> Optional[int]:
    try:
        year = int(value)
    except (TypeError, ValueError):
        return None
    return year if year > 0 else None


def _qualified(title: str, year: Optional[int], maker: Optional[str], scheme: tuple[str, ...]) -> str:
    parts = []
    if "maker" in scheme and maker:
        parts.append(maker)
    if "year" in scheme and year is not None and not (scheme == ("year",) and title.endswith(f"({year})")):
        parts.append(str(year))
    return f"{title} ({', '.join(parts)})" if parts else title


_SCHEMES: tuple[tuple[str, ...], ...] = (("year",), ("maker",), ("maker", "year"))


def display_titles(items: pa.Table) -> dict[int, str]:
    """``{item_id: the text that stands for the item}`` (see the module docstring).

    ``items`` needs ``item_id`` and ``title``; ``year``, ``author`` and ``publisher`` are used
    when present. Raises DataError naming the first item whose title is empty.
    """
    for col in ("item_id", "title"):
        if col not in items.column_names:
            raise DataError(f"items table: missing column '{col}'; found {items.column_names}")
    extra = [c for c in ("year", "author", "publisher") if c in items.column_names]
    ids = items.column("item_id").to_pylist()
    titles = [normalise_title(t) for t in items.column("title").to_pylist()]
    groups: dict[str, list[int]] = defaultdict(list)
    for pos, (item_id, title) in enumerate(zip(ids, titles)):
        if not title:
            raise DataError(
                f"items table: item_id {item_id} has an empty title (`distrec data prepare` drops such "
                "items; prepare the dataset again)"
            )
        groups[title].append(pos)
    shown = {int(i): t for i, t in zip(ids, titles)}
    columns = {c: items.column(c).to_pylist() for c in extra}
    for title, members in groups.items():
        if len(members) < 2:
            continue
        rows = [{c: columns[c][p] for c in extra} for p in members]
        years = [_year(r.get("year")) for r in rows]
        makers = [_maker(r) for r in rows]
        best = [title] * len(members)  # a qualifier is only added where it tells items apart
        for scheme in _SCHEMES:
            labels = [_qualified(title, y, m, scheme) for y, m in zip(years, makers)]
            if len(set(labels)) > len(set(best)):
                best = labels
            if len(set(best)) == len(best):
                break
        for pos, label in zip(members, best):
            shown[int(ids[pos])] = label
    return shown
