"""Sampled negatives for CTR on implicit feedback (``data.label_rule: implicit``).

Implicit logs hold only positives (clicks, purchases, plays). Each positive CTR sample gets
``per_positive`` negative samples: the same user, time and history, an item drawn uniformly
from the catalogue (the distinct items of the interactions), rating 0 and label 0. A negative
is never an item the user interacted with at any time, and one sample's negatives are
distinct. Draws come from ``numpy.random.default_rng([seed, NEGATIVES_STREAM])`` in sample
order, with rejected draws redrawn (after ``_MAX_ROUNDS`` rounds a row is drawn exactly from
its allowed items), so the same inputs and seed always give the same negatives. This is the
usual uniform negative sampling of implicit-feedback recommendation (Rendle et al., BPR, 2009).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from distrec.errors import DataError

# Stream of the seeded generator; 0-2 are the split subsets' (distrec.data.split).
NEGATIVES_STREAM = 3
_MAX_ROUNDS = 50


def add_sampled_negatives(samples: pa.Table, interactions: pa.Table, per_positive: int, seed: int) -> pa.Table:
    """``samples`` (CTR, all positives) with ``per_positive`` negatives after each one.

    ``samples``: (s,) rows of ``schema.CTR_SAMPLES``; ``interactions``: the canonical
    interactions they came from. Returns (s * (1 + per_positive),) rows, each positive followed
    by its negatives, ``sample_id`` renumbered 0..n-1 in that order (so still chronological).
    Raises DataError naming the user when fewer than ``per_positive`` items are left to draw.
    """
    pool, inter_items = np.unique(interactions.column("item_id").to_numpy(), return_inverse=True)
    users, inter_users = np.unique(interactions.column("user_id").to_numpy(), return_inverse=True)
    n_items = len(pool)
    seen = np.unique(inter_users.astype(np.int64) * n_items + inter_items)  # sorted (user, item) keys
    sample_users = np.searchsorted(users, samples.column("user_id").to_numpy())
    counts = np.bincount(seen // n_items, minlength=len(users))
    short = np.flatnonzero(n_items - counts[sample_users] < per_positive)
    if len(short):
        u = sample_users[short[0]]
        raise DataError(
            f"user_id {int(users[u])} interacted with {int(counts[u])} of the {n_items} items: fewer than "
            f"data.negatives_per_positive={per_positive} are left to sample as negatives")

    rng = np.random.default_rng([seed, NEGATIVES_STREAM])
    drawn = rng.integers(0, n_items, size=(len(sample_users), per_positive))
    for _ in range(_MAX_ROUNDS):
        bad = _rejected(drawn, sample_users, seen, n_items)
        if not bad.any():
            break
        drawn[bad] = rng.integers(0, n_items, size=int(bad.sum()))
    else:
        for row in np.flatnonzero(_rejected(drawn, sample_users, seen, n_items).any(axis=1)):
            u = sample_users[row]
            allowed = np.setdiff1d(np.arange(n_items), seen[(seen // n_items) == u] % n_items)
            drawn[row] = rng.choice(allowed, size=per_positive, replace=False)

    s = samples.num_rows
    negatives = samples.take(pa.array(np.repeat(np.arange(s), per_positive)))
    negatives = negatives.set_column(negatives.schema.get_field_index("item_id"), "item_id",
                                     pa.array(pool[drawn.ravel()], pa.int64()))
    negatives = negatives.set_column(negatives.schema.get_field_index("rating"), "rating",
                                     pa.array(np.zeros(len(negatives), np.float32)))
    negatives = negatives.set_column(negatives.schema.get_field_index("label"), "label",
                                     pa.array(np.zeros(len(negatives), np.int8)))
    both = pa.concat_tables([samples, negatives])
    positive_of = np.concatenate([np.arange(s), np.repeat(np.arange(s), per_positive)])
    slot = np.concatenate([np.zeros(s, np.int64), np.tile(np.arange(1, per_positive + 1), s)])
    both = both.take(pa.array(np.lexsort((slot, positive_of))))
    return both.set_column(0, "sample_id", pa.array(np.arange(both.num_rows), pa.int64()))


def _rejected(drawn: np.ndarray, users: np.ndarray, seen: np.ndarray, n_items: int) -> np.ndarray:
    """(s, k) bool: the draw is an item of the user, or repeats an earlier draw of its row."""
    keys = users[:, None].astype(np.int64) * n_items + drawn
    pos = np.minimum(np.searchsorted(seen, keys), len(seen) - 1)
    bad = seen[pos] == keys
    for j in range(1, drawn.shape[1]):
        bad[:, j] |= (drawn[:, :j] == drawn[:, j:j + 1]).any(axis=1)
    return bad
