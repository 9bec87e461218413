"""Content checks every loader runs before handing tables on, each naming file and line.

The canonical tables feed label rules, time-ordered histories and id lookups. A NaN rating, a
rating outside the dataset's scale, a duplicate (user, item, timestamp) row or an id that
the items file does not know would silently corrupt all of them, so they stop the load here,
where the file and line can still be named.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distrec.data.loaders._io import Lines
from distrec.data.schema import INTERACTIONS, ITEMS, USERS, CanonicalTables, conform
from distrec.errors import DataError

log = logging.getLogger(__name__)

# Key of the interactions schema metadata that records rows dropped on purpose.
DROPPED_KEY = b"distrec.dropped_rows"


Column = pa.ChunkedArray | pa.Array


def check_ratings(ratings: Column, low: float, high: float, lines: Lines) -> None:
    """Fail on the first missing, NaN or out-of-scale rating."""
    values = pc.cast(ratings, pa.float64())
    bad = pc.or_kleene(pc.is_null(values), pc.is_nan(values))
    bad = pc.or_kleene(bad, pc.or_kleene(pc.less(values, low), pc.greater(values, high)))
    bad = pc.fill_null(bad, True)
    if pc.any(bad).as_py():
        row = pc.index(bad, True).as_py()
        value = values[row].as_py()
        if value is None:
            problem = "rating is missing"
        elif math.isnan(value):
            problem = "rating is NaN"
        else:
            problem = f"rating {value:g} is outside the scale {low:g}..{high:g}"
        raise DataError(f"{lines.at(row)}: {problem}")


def check_unique(table: pa.Table, keys: list[str], lines: Lines, what: str = "row") -> None:
    """Fail on the first row whose ``keys`` repeat an earlier row's."""
    if _all_distinct(table, keys):
        return
    frame = table.select(keys).to_pandas()
    row = int(np.argmax(frame.duplicated(keep="first").to_numpy()))
    first = int(np.argmax((frame == frame.iloc[row]).all(axis=1).to_numpy()))
    record = table.select(keys).slice(row, 1).to_pylist()[0]
    values = ", ".join(f"{k}={v!r}" for k, v in record.items())
    raise DataError(
        f"{lines.at(row)}: duplicate {what} ({values}); first seen at {lines.place(first)}"
    )


def _all_distinct(table: pa.Table, keys: list[str]) -> bool:
    """Whether no two rows share ``keys``.

    Integer keys are checked by sorting in numpy (25M rows in seconds, little memory; Arrow's
    hash kernels need gigabytes there); other keys by Arrow hashing, for small tables.
    """
    cols = [table.column(k) for k in keys]
    if not all(pa.types.is_integer(c.type) and c.null_count == 0 for c in cols):
        if len(keys) == 1:
            return len(pc.unique(cols[0])) == table.num_rows
        return table.num_rows == table.select(keys).group_by(keys).aggregate([]).num_rows
    arrays = [c.to_numpy().astype(np.int64, copy=False) for c in cols]
    if len(arrays) >= 2 and min(a.min() for a in arrays[:2]) >= 0 and max(
        a.max() for a in arrays[:2]
    ) < 2**31:
        packed = np.sort(arrays[0] * 2**32 + arrays[1])
        if not (packed[1:] == packed[:-1]).any():
            return True  # the first two keys alone are distinct, so all keys are
    if len(arrays) == 1:
        first = np.sort(arrays[0])
        return not (first[1:] == first[:-1]).any()
    order = np.lexsort(arrays[::-1])
    same = np.ones(len(order) - 1, dtype=bool)
    for a in arrays:
        ordered = a[order]
        same &= ordered[1:] == ordered[:-1]
    return not same.any()


def check_known(
    ids: Column, known: Column, lines: Lines, column: str, known_in: str
) -> None:
    """Fail on the first id in ``ids`` that is not in ``known``."""
    if isinstance(known, pa.ChunkedArray):
        known = known.combine_chunks()
    unknown = pc.invert(pc.is_in(ids, value_set=known))
    if pc.any(unknown).as_py():
        row = pc.index(unknown, True).as_py()
        raise DataError(
            f"{lines.at(row)}: {column} {ids[row].as_py()!r} is not in {known_in}"
        )


def finish(
    interactions: pa.Table,
    items: pa.Table,
    users: pa.Table,
    source: str,
    dropped: dict[str, int] | None = None,
) -> CanonicalTables:
    """Conform the three tables to the canonical schemas and validate them.

    ``dropped`` counts rows left out on purpose, by reason; it is logged and kept in the
    interactions schema metadata under ``DROPPED_KEY`` (JSON) for reports.
    """
    inter = conform(interactions, INTERACTIONS, f"{source} [interactions]")
    dropped = {k: v for k, v in (dropped or {}).items() if v}
    if dropped:
        for reason, count in dropped.items():
            log.warning("%s: dropped %d row(s): %s", source, count, reason)
        inter = inter.replace_schema_metadata({DROPPED_KEY: json.dumps(dropped).encode()})
    tables = CanonicalTables(
        interactions=inter,
        items=conform(items, ITEMS, f"{source} [items]"),
        users=conform(users, USERS, f"{source} [users]"),
        source=source,
    )
    return tables.validate()


def dropped_rows(tables: CanonicalTables) -> dict[str, int]:
    """Rows a loader left out on purpose, by reason (empty when none)."""
    meta = tables.interactions.schema.metadata or {}
    raw = meta.get(DROPPED_KEY)
    return json.loads(raw) if raw else {}


def check_interactions(
    inter: pa.Table,
    lines: Lines,
    scale: tuple[float, float],
    item_ids: Column,
    items_file: str,
    user_ids: Column | None = None,
    users_file: str = "",
) -> None:
    """All checks of an interactions table read straight from one ratings file.

    ``inter`` has columns user_id, item_id, rating, timestamp; row i is at ``lines.line(i)``.
    """
    check_ratings(inter.column("rating"), scale[0], scale[1], lines)
    check_known(inter.column("item_id"), item_ids, lines, "item id", items_file)
    if user_ids is not None:
        check_known(inter.column("user_id"), user_ids, lines, "user id", users_file)
    check_unique(inter, ["user_id", "item_id", "timestamp"], lines, "interaction")
