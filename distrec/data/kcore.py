"""Iterative k-core filtering of an interaction table (CFT/D3 §1.5: 5-core on users and items).

Dropping a sparse item can push a user below ``k`` (and vice versa), so the filter repeats
until every remaining user and every remaining item has at least ``k`` interactions. Every
row counts as one interaction (D3 counts reviews; there is no rating threshold), so a
repeated (user, item) pair counts twice.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def iterative_kcore(interactions: pa.Table, k: int) -> pa.Table:
    """Return the rows of ``interactions`` that survive the iterative ``k``-core.

    ``interactions``: any table with int ``user_id`` and ``item_id`` columns (n rows).
    Returns the surviving rows in their original order (m <= n rows, same schema); ``k <= 0``
    returns the input unchanged. The result may be empty when no k-core exists.
    """
    if k <= 0 or interactions.num_rows == 0:
        return interactions
    # Dense codes make each round two bincounts over the surviving rows.
    _, users = np.unique(interactions.column("user_id").to_numpy(), return_inverse=True)
    _, items = np.unique(interactions.column("item_id").to_numpy(), return_inverse=True)
    keep = np.arange(interactions.num_rows)
    while keep.size:
        u, i = users[keep], items[keep]
        ok = (np.bincount(u)[u] >= k) & (np.bincount(i)[i] >= k)
        if ok.all():
            break
        keep = keep[ok]
    return interactions.take(pa.array(keep, type=pa.int64()))
