"""Interactions -> training samples, for the CTR task (ReLLa §3.3) and the generative task (D3 §1.5).

Both tasks share one deterministic order and one history rule:

- **Global order.** All interactions are sorted by ``(timestamp, user_id, item_id)`` — ReLLa
  sorts by time, then user, then movie. Exact duplicate keys keep their input row order
  (stable sort). A sample's ``sample_id`` is its target's position in this order, so ids are
  stable and ``sample_id`` order is chronological.
- **History.** A user's history at an interaction is that user's interactions *earlier in the
  global order* (so same-second ratings of one user are ordered by item_id), oldest first.

CTR: every interaction whose user already has ``>= min_history`` earlier interactions is a
sample with the *full* history (optionally capped to the most recent ``max_history_stored``)
and ``label = rating >= label_threshold``. Generative: every interaction with ``>= 1`` earlier
interaction is a sample whose history is the ``<= max_history`` preceding items.

Everything is vectorised: one lexsort, one stable argsort by user, and the histories are
gathered with a repeat/arange index into Arrow list arrays built from offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from distrec.data.kcore import iterative_kcore
from distrec.data.schema import (
    CTR_SAMPLES,
    GENERATIVE_SAMPLES,
    INTERACTIONS,
    CanonicalTables,
    conform,
)
from distrec.errors import DataError

_MAX_LIST_VALUES = 2**31 - 1  # list<...> uses int32 offsets


_CHUNK_VALUES = 1 << 24  # history entries gathered at a time (bounds the index arrays' memory)


@dataclass(frozen=True)
class _Histories:
    """Which interactions become samples and which interactions form their histories.

    ``targets``: (s,) row indices into the interactions table, in global order.
    ``sample_ids``: (s,) int64 global positions of the targets.
    ``offsets``: (s+1,) int64 list offsets; sample j's history is entries ``offsets[j]:offsets[j+1]``.
    ``first``: (s,) the position, in ``rows_by_user``, of each sample's oldest kept entry.
    ``rows_by_user``: (n,) row indices into the interactions table grouped by user, each user's
    rows in global order; sample j's history is ``rows_by_user[first[j]:first[j] + length_j]``.
    """

    targets: np.ndarray
    sample_ids: np.ndarray
    offsets: np.ndarray
    first: np.ndarray
    rows_by_user: np.ndarray

    def lists(self, column: np.ndarray, type_: pa.DataType) -> pa.ChunkedArray:
        """The histories as list arrays of ``column`` (a per-interaction numpy array), gathered
        about ``_CHUNK_VALUES`` entries at a time, so only the result grows with the data."""
        chunks, n = [], len(self.targets)
        a = 0
        while a < n or not chunks:
            b = int(np.searchsorted(self.offsets, self.offsets[a] + _CHUNK_VALUES, side="right")) - 1
            b = min(max(b, a + 1), n)
            lo, hi = int(self.offsets[a]), int(self.offsets[b])
            lengths = np.diff(self.offsets[a:b + 1])
            slots = np.repeat(self.first[a:b] - self.offsets[a:b], lengths) + np.arange(lo, hi)
            chunks.append(pa.ListArray.from_arrays(pa.array(self.offsets[a:b + 1] - lo, type=pa.int32()),
                                                   pa.array(column[self.rows_by_user[slots]], type=type_)))
            a = b
        return pa.chunked_array(chunks, type=pa.list_(type_))


def global_order(interactions: pa.Table) -> np.ndarray:
    """Row indices (n,) sorting ``interactions`` by (timestamp, user_id, item_id), stably."""
    ts = interactions.column("timestamp").to_numpy()
    users = interactions.column("user_id").to_numpy()
    items = interactions.column("item_id").to_numpy()
    return np.lexsort((items, users, ts))  # last key is the primary one


def _histories(interactions: pa.Table, min_history: int, max_len: int | None) -> _Histories:
    """Select targets with ``>= min_history`` earlier interactions; keep ``<= max_len`` of them."""
    n = interactions.num_rows
    order = global_order(interactions)  # global position -> row
    users_g = interactions.column("user_id").to_numpy()[order]
    by_user = np.argsort(users_g, kind="stable")  # grouped by user, each group in global order
    grouped = users_g[by_user]
    del users_g
    is_first = np.ones(n, dtype=bool)
    is_first[1:] = grouped[1:] != grouped[:-1]
    del grouped
    group_start = np.maximum.accumulate(np.where(is_first, np.arange(n), 0))  # per by_user slot
    del is_first
    slot = np.empty(n, dtype=np.int64)
    slot[by_user] = np.arange(n)  # global position -> by_user slot
    earlier = slot - group_start[slot]  # per global position: the user's earlier interactions

    sample_ids = np.flatnonzero(earlier >= min_history)
    del earlier
    end = slot[sample_ids]
    start = group_start[end]
    del slot, group_start
    if max_len is not None:
        start = np.maximum(start, end - max_len)
    lengths = end - start
    total = int(lengths.sum())
    if total > _MAX_LIST_VALUES:
        raise DataError(
            f"histories hold {total:,} entries, more than an Arrow list can ({_MAX_LIST_VALUES:,}): "
            "cap them with the config key data.max_history_stored (the most recent N kept per sample)"
        )
    offsets = np.zeros(len(sample_ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return _Histories(targets=order[sample_ids], sample_ids=sample_ids.astype(np.int64), offsets=offsets,
                      first=start, rows_by_user=order[by_user])


def _interactions(tables: CanonicalTables) -> pa.Table:
    return conform(tables.interactions, INTERACTIONS, f"{tables.source} [interactions]")


def build_ctr_samples(
    tables: CanonicalTables,
    *,
    min_history: int = 5,
    label_threshold: float,
    max_history_stored: int | None = None,
) -> pa.Table:
    """CTR samples (schema ``CTR_SAMPLES``), one per qualifying interaction, in global order.

    ``min_history``: earlier interactions a user needs before an interaction is a sample.
    ``label_threshold``: ``label = int8(rating >= label_threshold)``.
    ``max_history_stored``: keep only the most recent N history entries (None = all); the job
    config's ``data.max_history_stored``, whose default and its reason are in
    ``distrec.config.DataConfig``. Raises DataError naming that key when the histories hold more
    entries than an Arrow list column can (2**31 - 1).
    """
    inter = _interactions(tables)
    h = _histories(inter, min_history, max_history_stored)
    items = inter.column("item_id").to_numpy()
    ratings = inter.column("rating").to_numpy()
    target_ratings = ratings[h.targets]
    columns = {
        "sample_id": pa.array(h.sample_ids, type=pa.int64()),
        "user_id": pa.array(inter.column("user_id").to_numpy()[h.targets], type=pa.int64()),
        "item_id": pa.array(items[h.targets], type=pa.int64()),
        "rating": pa.array(target_ratings, type=pa.float32()),
        "timestamp": pa.array(inter.column("timestamp").to_numpy()[h.targets], type=pa.int64()),
        "label": pa.array((target_ratings >= label_threshold).astype(np.int8), type=pa.int8()),
        "history_item_ids": h.lists(items, pa.int64()),
        "history_ratings": h.lists(ratings, pa.float32()),
    }
    return pa.Table.from_pydict(columns, schema=CTR_SAMPLES)


def build_generative_samples(tables: CanonicalTables, max_history: int = 10, kcore: int = 0) -> pa.Table:
    """Next-item samples (schema ``GENERATIVE_SAMPLES``), in global order.

    ``kcore > 0`` first applies the iterative k-core (``distrec.data.kcore``); then every
    interaction with at least one earlier interaction of its user is a target, with the
    ``<= max_history`` preceding items as history. ``sample_id`` is the position in the
    global order of the (filtered) interactions.
    """
    if kcore > 0:
        tables = replace(tables, interactions=iterative_kcore(tables.interactions, kcore))
    inter = _interactions(tables)
    h = _histories(inter, 1, max_history)
    columns = {
        "sample_id": pa.array(h.sample_ids, type=pa.int64()),
        "user_id": pa.array(inter.column("user_id").to_numpy()[h.targets], type=pa.int64()),
        "item_id": pa.array(inter.column("item_id").to_numpy()[h.targets], type=pa.int64()),
        "timestamp": pa.array(inter.column("timestamp").to_numpy()[h.targets], type=pa.int64()),
        "history_item_ids": h.lists(inter.column("item_id").to_numpy(), pa.int64()),
    }
    return pa.Table.from_pydict(columns, schema=GENERATIVE_SAMPLES)
