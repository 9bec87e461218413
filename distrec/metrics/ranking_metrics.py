"""Top-K metrics for next-item ranking with one relevant item per query (CFT/BIGRec, EIMF).

With a single relevant item, HR@K is "was it in the top K" and NDCG@K reduces to
1 / log2(rank + 2) for a 0-based rank below K (the ideal DCG is 1), so both metrics
only need the rank of the true item. A rank of -1 (or None) means "not retrieved".
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

DEFAULT_KS: tuple[int, ...] = (1, 3, 5, 10, 20)


def _as_rank_array(ranks: Iterable[int | None] | np.ndarray) -> np.ndarray:
    """Ranks as an int64 array of shape (n,), with None mapped to -1 (miss).

    Raises ValueError naming the position of a rank that is not a whole number (NaN, inf, 2.5).
    """
    values = []
    for pos, r in enumerate(ranks):
        if r is None:
            values.append(-1)
            continue
        as_float = float(r)
        if not np.isfinite(as_float) or as_float != int(as_float):
            raise ValueError(f"rank at position {pos} is {r!r}: ranks must be whole numbers (-1 = miss)")
        values.append(int(as_float))
    return np.asarray(values, dtype=np.int64).reshape(-1)


def rank_metrics(
    ranks: Iterable[int | None] | np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Mean HR@K and NDCG@K over queries.

    Args:
        ranks: shape (n,), 0-based rank of the true item per query; -1 or None = miss.
        ks: cut-offs, each >= 1.

    Returns:
        ``{"hr@k": ..., "ndcg@k": ...}`` for every k in ``ks`` (means over the n queries).
    """
    r = _as_rank_array(ranks)
    if r.size == 0:
        raise ValueError("rank_metrics needs at least one rank")
    hit = r >= 0
    # Gain of a hit at 0-based rank r is 1/log2(r + 2); misses get a dummy rank to keep log finite.
    gain = np.where(hit, 1.0 / np.log2(np.where(hit, r, 0) + 2.0), 0.0)
    out: dict[str, float] = {}
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        in_top = hit & (r < k)
        out[f"hr@{k}"] = float(in_top.mean())
        out[f"ndcg@{k}"] = float(np.where(in_top, gain, 0.0).mean())
    return out


def recall_at_k(topk_items: np.ndarray | Sequence[Sequence[int]], targets: np.ndarray | Sequence[int]) -> np.ndarray:
    """0-based position of each target in its row of retrieved items.

    Args:
        topk_items: shape (n, K), item ids ordered best first.
        targets: shape (n,), the one relevant item id per row.

    Returns:
        int64 array of shape (n,): the first position of the target in its row, or -1.
        Feed it to :func:`rank_metrics`.
    """
    items = np.asarray(topk_items)
    tgt = np.asarray(targets).reshape(-1)
    if items.ndim != 2 or items.shape[0] != tgt.shape[0]:
        raise ValueError(f"topk_items must be (n, K) with n = len(targets); got {items.shape} and {tgt.shape}")
    matches = items == tgt[:, None]
    return np.where(matches.any(axis=1), matches.argmax(axis=1), -1).astype(np.int64)


def interleave_beams(rankings: Sequence[Sequence[int]], cut: int = 500) -> list[int]:
    """Merge several beams' item rankings into one list, rank-major.

    BIGRec-style grounding gives one ranking per generated beam; the merged list takes
    rank 1 of beams 1..n, then rank 2 of beams 1..n, and so on, keeping only the first
    occurrence of each item, and stops after ``cut`` items.

    Args:
        rankings: n lists of item ids, each best first (lengths may differ).
        cut: maximum length of the result.

    Returns:
        De-duplicated merged ranking, at most ``cut`` long.
    """
    merged: list[int] = []
    if cut <= 0:
        return merged
    seen: set[int] = set()
    depth = max((len(r) for r in rankings), default=0)
    for pos in range(depth):
        for ranking in rankings:
            if pos >= len(ranking):
                continue
            item = ranking[pos]
            if item in seen:
                continue
            seen.add(item)
            merged.append(item)
            if len(merged) >= cut:
                return merged
    return merged
