"""Each user's history as of a moment, rebuilt from a prepared folder's interaction log.

The rule is the one :mod:`distrec.data.samples` trains with: interactions are ordered by
``(timestamp, user_id, item_id)``, and a user's history at ``(timestamp t, item i)`` is that
user's interactions strictly earlier in this order, oldest first — those with an earlier
timestamp, and those at ``t`` with a smaller item id. Without a timestamp the history is
everything the log holds for the user ("as of now"). A cap keeps the most recent entries,
as ``data.max_history_stored`` (CTR) and ``data.max_history`` (generative) do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from distrec.data.samples import global_order


@dataclass(frozen=True)
class History:
    item_ids: np.ndarray  # (n,) int64, oldest first
    ratings: np.ndarray  # (n,) float32


class InteractionLog:
    """Per-user slices of the interaction log, each in global order.

    Args:
        interactions: ``user_id, item_id, rating, timestamp`` (the prepared folder's
            ``interactions`` table).
    """

    def __init__(self, interactions: pa.Table) -> None:
        order = global_order(interactions)
        users = interactions.column("user_id").to_numpy()[order]
        by_user = np.argsort(users, kind="stable")  # grouped by user, each group in global order
        rows = order[by_user]
        self.items = interactions.column("item_id").to_numpy()[rows].astype(np.int64)
        self.ratings = interactions.column("rating").to_numpy(zero_copy_only=False)[rows].astype(np.float32)
        self.times = interactions.column("timestamp").to_numpy()[rows].astype(np.int64)
        self.user_ids, starts = np.unique(users[by_user], return_index=True)
        self.bounds = np.append(starts, len(rows))

    def __contains__(self, user_id: int) -> bool:
        i = np.searchsorted(self.user_ids, user_id)
        return bool(i < len(self.user_ids) and self.user_ids[i] == user_id)

    def history(self, user_id: int, timestamp: int | None = None, item_id: int | None = None,
                max_len: int | None = None) -> History | None:
        """The user's history before ``(timestamp, item_id)`` (module doc); None for a user the log lacks.

        ``item_id`` breaks ties at ``timestamp``; without it only strictly earlier timestamps count."""
        i = np.searchsorted(self.user_ids, user_id)
        if i >= len(self.user_ids) or self.user_ids[i] != user_id:
            return None
        lo, hi = int(self.bounds[i]), int(self.bounds[i + 1])
        end = hi
        if timestamp is not None:
            times = self.times[lo:hi]
            end = lo + int(np.searchsorted(times, timestamp, side="left"))
            if item_id is not None:
                same = lo + int(np.searchsorted(times, timestamp, side="right"))
                end += int(np.searchsorted(self.items[end:same], item_id, side="left"))
        start = lo if max_len is None else max(lo, end - max_len)
        return History(self.items[start:end], self.ratings[start:end])
