"""A toy catalogue and interaction log for EIMF tests: user u draws only from genre u mod 4,
so multi-interest models have something learnable and typical users have clusters."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

GENRES = ["Action", "Drama", "Comedy", "Horror"]


def toy_items(n_items: int) -> pa.Table:
    """Items 100 .. 100 + n_items - 1; item i has genre i mod 4."""
    return pa.table({
        "item_id": pa.array(np.arange(100, 100 + n_items), pa.int64()),
        "title": [f"Movie {i}" for i in range(n_items)],
        "categories": [[GENRES[i % 4]] for i in range(n_items)],
    })


def toy_samples(n_users: int, n_items: int, seed: int = 0) -> pa.Table:
    """10 interactions per user (items of genre u mod 4) -> 9 next-item samples each."""
    rng = np.random.default_rng(seed)
    rows, sid = [], 0
    for u in range(n_users):
        seq = [100 + int(x) for x in rng.choice(np.arange(u % 4, n_items, 4), 10)]
        for j in range(1, len(seq)):
            rows.append({"sample_id": sid, "user_id": u, "item_id": seq[j], "timestamp": 1000 + j,
                         "history_item_ids": seq[:j]})
            sid += 1
    return pa.Table.from_pylist(rows)
