"""Input rows of ``distrec predict`` -> prepared samples, exactly as ``distrec data prepare`` builds them.

Input columns: ``user_id`` and, for CTR, ``item_id`` (the candidate to score); optional
``timestamp`` (unix seconds, or an Arrow timestamp/date: the history is the user's log before it, see
:mod:`distrec.predict.history`; absent or null: the whole log); optional explicit
``history_item_ids`` (oldest first; with ``history_ratings`` for CTR, whose prompts show
ratings) that replace the log. Generative rows may carry ``item_id`` (the known next item,
only used to order same-second interactions and to size the prompt as training did). Any other
column is kept in the output untouched. Ids are the run's dense ids (integers) or the
dataset's own keys as text (``"cust-042"``, an ASIN, an ISBN: the ``source_id`` of the run's
items/users tables), so a platform's own ids go in and come out unchanged.

Rows that cannot be scored are returned with a reason, never raised: an empty ``user_id``, an
item outside the run's catalogue, a user the log lacks (without explicit history), or an
empty history.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from distrec.data.schema import CTR_SAMPLES, GENERATIVE_SAMPLES
from distrec.errors import DataError
from distrec.predict.history import InteractionLog

OPTIONAL = ("timestamp", "history_item_ids", "history_ratings")


def required_columns(task: str) -> tuple[str, ...]:
    return ("user_id", "item_id") if task == "ctr" else ("user_id",)


def check_columns(schema: pa.Schema, task: str, where: str) -> None:
    """DataError naming the missing column (and the input) before any actor starts."""
    missing = [c for c in required_columns(task) if c not in schema.names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; a {task} run scores rows of "
                        f"{list(required_columns(task))} (+ optional {list(OPTIONAL)}); found {schema.names}")
    if task == "ctr" and "history_item_ids" in schema.names and "history_ratings" not in schema.names:
        raise DataError(f"{where}: history_item_ids without history_ratings: the run's CTR prompts show the "
                        "rating of every history item, so give both columns")


@dataclass(frozen=True)
class SampleRules:
    """What the run's data config and tables fix about samples."""

    task: str  # "ctr" or "generative"
    max_history: int | None  # CTR: data.max_history_stored; generative: data.max_history
    catalogue: frozenset  # item ids the run can name
    item_keys: Mapping[str, int] = field(default_factory=dict)  # raw key (items.source_id) -> item id
    user_keys: Mapping[str, int] = field(default_factory=dict)  # raw key (users.source_id) -> user id

    @classmethod
    def from_tables(cls, task: str, max_history: int | None, items: pa.Table, users: pa.Table) -> "SampleRules":
        def keys(table: pa.Table, id_column: str) -> dict[str, int]:
            if "source_id" not in table.column_names:
                return {}
            return {k: int(i) for k, i in zip(table.column("source_id").to_pylist(), table.column(id_column).to_pylist())
                    if k is not None}

        return cls(task, max_history, frozenset(int(i) for i in items.column("item_id").to_pylist()),
                   keys(items, "item_id"), keys(users, "user_id"))


def _translate(value, keys: Mapping[str, int], what: str):
    """A text id (the dataset's own key, e.g. "cust-042") -> its dense id; ``(id, reason)``."""
    if isinstance(value, str):
        if value not in keys:
            return None, f"{what} {value!r} is not a key of the run's {'items' if what == 'item_id' else 'users'} table"
        return keys[value], ""
    return value, ""


def _column(rows: pa.Table, name: str) -> list:
    if name not in rows.column_names:
        return [None] * rows.num_rows
    col = rows.column(name)
    if name == "timestamp" and (pa.types.is_timestamp(col.type) or pa.types.is_date(col.type)):
        col = col.cast(pa.timestamp("s")).cast(pa.int64())  # an Arrow time: unix seconds, as the log holds
    return col.to_pylist()


def build_samples(rows: pa.Table, log: InteractionLog, rules: SampleRules) -> tuple[pa.Table, np.ndarray, list[tuple[int, str]]]:
    """``(samples, kept, bad)``: samples in the prepared schema of ``rules.task`` for the good rows
    (``sample_id`` = the row's index in ``rows``), the indices of those rows, and
    ``(index, reason)`` for every other row."""
    users, items, times = _column(rows, "user_id"), _column(rows, "item_id"), _column(rows, "timestamp")
    given, given_ratings = _column(rows, "history_item_ids"), _column(rows, "history_ratings")
    out: dict[str, list] = {f.name: [] for f in (CTR_SAMPLES if rules.task == "ctr" else GENERATIVE_SAMPLES)}
    kept, bad = [], []
    for i in range(rows.num_rows):
        reason, history = _resolve_row(users[i], items[i], times[i], given[i], given_ratings[i], log, rules)
        if reason:
            bad.append((i, reason))
            continue
        user, item, hist_items, hist_ratings = history
        target = item if item is not None else int(hist_items[-1])  # generative without a known next item
        kept.append(i)
        row = {"sample_id": i, "user_id": int(user) if user is not None else -1, "item_id": int(target),
               "timestamp": int(times[i]) if times[i] is not None else 0,
               "history_item_ids": [int(x) for x in hist_items]}
        if rules.task == "ctr":
            row.update(rating=float("nan"), label=0, history_ratings=[float(x) for x in hist_ratings])
        for k in out:
            out[k].append(row[k])
    schema = CTR_SAMPLES if rules.task == "ctr" else GENERATIVE_SAMPLES
    return pa.table(out, schema=schema), np.asarray(kept, dtype=np.int64), bad


def _resolve_row(user, item, timestamp, given, given_ratings, log: InteractionLog, rules: SampleRules):
    """``(reason, None)`` for a bad row, else ``("", (user id, item id, history item ids, ratings))``."""
    user, why_user = _translate(user, rules.user_keys, "user_id")
    item, why_item = _translate(item, rules.item_keys, "item_id")
    if why_user or why_item:
        return why_user or why_item, None
    if given is not None:
        translated = [_translate(x, rules.item_keys, "item_id") for x in given]
        unknown = next((why for _, why in translated if why), "")
        if unknown:
            return f"history_item_ids: {unknown}", None
        given = [x for x, _ in translated]
    reason, history = _resolve(user, item, timestamp, given, given_ratings, log, rules)
    return reason, None if reason else (user, item, *history)


def _resolve(user, item, timestamp, given, given_ratings, log: InteractionLog, rules: SampleRules):
    """``(reason, None)`` for a bad row, else ``("", (history item ids, ratings))``."""
    if user is None and given is None:
        return "user_id is empty (and no history_item_ids given)", None
    if rules.task == "ctr" and item is None:
        return "item_id is empty", None
    if item is not None and item not in rules.catalogue:
        return f"item_id {item} is not in the run's catalogue", None
    if given is not None:
        unknown = [x for x in given if x not in rules.catalogue]
        if unknown:
            return f"history_item_ids holds {unknown[0]}, which is not in the run's catalogue", None
        if rules.task == "ctr" and (given_ratings is None or len(given_ratings) != len(given)):
            return (f"{len(given)} history_item_ids but "
                    f"{'no' if given_ratings is None else len(given_ratings)} history_ratings"), None
        if rules.task == "ctr" and any(r is None or not np.isfinite(r) for r in given_ratings):
            return "history_ratings holds an empty or non-finite rating", None
        ratings = given_ratings if rules.task == "ctr" else [0.0] * len(given)
        keep = len(given) if rules.max_history is None else rules.max_history
        history = (np.asarray(given[-keep:] if keep else [], dtype=np.int64),
                   np.asarray(ratings[-keep:] if keep else [], dtype=np.float32))
    else:
        found = log.history(int(user), timestamp, item, rules.max_history)
        if found is None:
            return f"user_id {user} has no interactions in the run's log (give history_item_ids)", None
        history = (found.item_ids, found.ratings)
    if len(history[0]) == 0:
        when = f" before timestamp {timestamp}" if timestamp is not None else ""
        return f"user_id {user}: empty history{when}", None
    return "", history
