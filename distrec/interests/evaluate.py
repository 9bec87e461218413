"""Full-catalogue multi-interest retrieval evaluation (faiss), as in ComiRec.

Every item embedding (rows 1..N of the backbone's table) goes into a ``faiss.IndexFlatIP``.
Each interest of a user searches its top-n; the candidates of all interests are merged, each
scored by the maximum over the user's interests of interest·item (exact rescoring), duplicates
dropped, and the best n kept (ties to the lower item row). This equals brute-force ranking by
max-over-interests: an item in the true top-n is in the top-n of the interest that attains its
maximum. Optionally the user's history items are excluded (each interest then searches
``n + max history`` deep).

With one target per query, Recall@K = HR@K (1 iff the target is among the top K); NDCG@K =
1/log2(rank + 2) for a hit at 0-based rank < K. Both come from
:func:`distrec.metrics.ranking_metrics.rank_metrics`; their 95 % intervals come from the bootstrap
over users of :mod:`distrec.eval.intervals`, and the per-row ranks (``return_rows``) let
``distrec compare`` pair two runs on the same samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from distrec.errors import DataError
from distrec.eval.compare import ranking_predictions
from distrec.metrics.finite import require_finite
from distrec.eval.intervals import ranking_intervals
from distrec.metrics.ranking_metrics import rank_metrics, recall_at_k
from distrec.model.interests.backbones import ItemIndex
from distrec.config.eimf import EimfEvalConfig


HIT_NAMES = ("recall", "hr")
"""Names of the hit metric in EIMF results (Recall@K = HR@K with one target per sample)."""


def _backbone(model):
    model = getattr(model, "module", model)  # a DeepSpeed engine or DDP wrapper
    return getattr(model, "backbone", model)


@torch.no_grad()
def user_interests(model, hist: np.ndarray, mask: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Interests [S, K, d] (float32, numpy) from the backbone alone, in eval mode."""
    bb = _backbone(model)
    was_training = bb.training
    bb.eval()
    device = bb.item_emb.weight.device
    out = []
    for s in range(0, len(hist), batch_size):
        h = torch.from_numpy(hist[s : s + batch_size]).to(device)
        m = torch.from_numpy(mask[s : s + batch_size]).to(device)
        out.append(bb(h, m).float().cpu().numpy())
    bb.train(was_training)
    if not out:
        k, d = bb.cfg.num_interests, bb.cfg.dim
        return np.zeros((0, k, d), dtype=np.float32)
    return np.concatenate(out)


@torch.no_grad()
def item_matrix(model) -> np.ndarray:
    """[N, d] float32 item embeddings (rows 1..N; position p is item row p + 1)."""
    return np.ascontiguousarray(_backbone(model).item_vectors().float().cpu().numpy())


def build_index(items: np.ndarray):
    """Exact inner-product index over ``items`` [N, d] (on the GPUs when faiss-gpu sees any)."""
    import faiss

    from distrec.eval.faiss_gpu import on_gpus_if_any

    index = faiss.IndexFlatIP(items.shape[1])
    index.add(np.ascontiguousarray(items, dtype=np.float32))
    return on_gpus_if_any(index)


def _exclusion_mask(cand: np.ndarray, exclude: Sequence[np.ndarray] | None) -> np.ndarray:
    """Bool [B, C]: candidate (item position) is in that user's excluded set."""
    out = np.zeros(cand.shape, dtype=bool)
    if exclude is None:
        return out
    for i, ex in enumerate(exclude):
        if len(ex):
            out[i] = np.isin(cand[i], ex)
    return out


def history_exclusions(hist: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
    """Per row of a padded history (rows [B, L], bool mask [B, L]), the item positions (0..N-1,
    sorted, unique) it holds: what ``eval.exclude_history`` keeps out of that row's ranking."""
    return [np.unique(h[m] - 1) for h, m in zip(hist, mask)]


def merged_topn(
    interests: np.ndarray,
    items: np.ndarray,
    n: int,
    exclude: Sequence[np.ndarray] | None = None,
    index=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-n item positions [B, n] and scores by max over interests, via per-interest faiss search.

    Args:
        interests: [B, K, d]; items: [N, d]; n: list length (capped at N);
        exclude: per user, item positions (0..N-1) never to return;
        index: a prebuilt ``IndexFlatIP`` over ``items`` (built when None).
    Positions with no candidate left (only when exclusions leave fewer than n items) are -1.
    """
    b, k, d = interests.shape
    n_items = items.shape[0]
    n = min(n, n_items)
    depth = min(n_items, n + max((len(e) for e in exclude), default=0) if exclude is not None else n)
    if index is None:
        index = build_index(items)
    _, found = index.search(np.ascontiguousarray(interests.reshape(b * k, d), dtype=np.float32), depth)
    cand = found.reshape(b, k * depth)
    cand = np.sort(cand, axis=1)  # by position, so ties resolve to the lower item
    valid = cand >= 0
    safe = np.where(valid, cand, 0)
    scores = np.einsum("bkd,bcd->bkc", interests, items[safe]).max(axis=1)
    dup = np.zeros_like(valid)
    dup[:, 1:] = cand[:, 1:] == cand[:, :-1]
    drop = ~valid | dup | _exclusion_mask(safe, exclude)
    scores = np.where(drop, -np.inf, scores).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :n]
    top = np.take_along_axis(cand, order, axis=1)
    top_scores = np.take_along_axis(scores, order, axis=1)
    top = np.where(np.isfinite(top_scores), top, -1)
    return top.astype(np.int64), top_scores


def retrieval_metrics(topn_item_ids: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (20, 50)) -> dict[str, float]:
    """``recall@K``, ``hr@K``, ``ndcg@K`` (means) from ranked item ids [S, n] and one target each."""
    ranks = recall_at_k(topn_item_ids, targets)
    base = rank_metrics(ranks, ks)
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = base[f"hr@{k}"]
        out[f"ndcg@{k}"] = base[f"ndcg@{k}"]
        out[f"hr@{k}"] = base[f"hr@{k}"]
    return out


def evaluate_retrieval(
    model,
    samples_table: pa.Table,
    items: pa.Table | ItemIndex,
    cfg: EimfEvalConfig | None = None,
    *,
    return_topn: bool = False,
    return_rows: bool = False,
) -> dict:
    """Recall/NDCG/HR@K over the full catalogue for every sample of ``samples_table``.

    ``model``: an :class:`~distrec.model.interests.eimf.EimfModel`, its backbone, or a DeepSpeed/DDP wrapper;
    only the backbone is used. Returns the metrics, ``n``, ``ci`` (``[low, high]`` per metric)
    and ``bootstrap`` (how the intervals were drawn, :func:`distrec.eval.intervals.ranking_intervals`);
    with ``return_topn`` also ``topn_item_ids`` [S, max K] and ``topn_scores``; with
    ``return_rows`` also ``rows``, the per-sample table of
    :func:`distrec.eval.compare.ranking_predictions` (sample_id, user_id, item_id, rank).

    Raises:
        DataError: ``return_rows`` and the samples have no ``sample_id`` column.
    """
    from distrec.model.interests.eimf import encode_samples

    cfg = cfg or EimfEvalConfig()
    index = items if isinstance(items, ItemIndex) else ItemIndex.from_items(items)
    bb = _backbone(model)
    data = encode_samples(samples_table, index, bb.cfg.max_len)
    item_vecs = item_matrix(bb)
    where = "EIMF retrieval evaluation"  # NaN/inf vectors would give arbitrary neighbours
    require_finite(item_vecs, index.ids, where=where, what="item embedding", id_name="item id")
    sample_ids = samples_table.column("sample_id").to_numpy() if "sample_id" in samples_table.column_names else None
    faiss_index = build_index(item_vecs)
    n = max(cfg.ks)
    tops, scores = [], []
    for s in range(0, len(data), cfg.batch_size):
        sl = slice(s, s + cfg.batch_size)
        inter = user_interests(bb, data.hist[sl], data.mask[sl], cfg.batch_size)
        require_finite(inter, None if sample_ids is None else sample_ids[sl], where=where, what="interest set")
        exclude = None
        if cfg.exclude_history:
            exclude = history_exclusions(data.hist[sl], data.mask[sl])
        t, sc = merged_topn(inter, item_vecs, n, exclude, faiss_index)
        tops.append(t)
        scores.append(sc)
    top = np.concatenate(tops) if tops else np.zeros((0, n), dtype=np.int64)
    top_ids = index.item_ids(top + 1)  # positions -> rows -> ids; -1 stays -1
    targets = index.ids[data.target - 1]
    out: dict = {"n": len(data), **retrieval_metrics(top_ids, targets, cfg.ks)}
    ranks = recall_at_k(top_ids, targets)
    out.update(ranking_intervals(ranks, data.user_id, cfg.ks, hit_names=HIT_NAMES))
    if return_rows:
        if "sample_id" not in samples_table.column_names:
            raise DataError(f"samples table: per-row results need a 'sample_id' column; found {samples_table.column_names}")
        out["rows"] = ranking_predictions(samples_table.column("sample_id").to_numpy(), data.user_id, targets, ranks,
                                          cfg.ks, HIT_NAMES)
    if return_topn:
        out["topn_item_ids"] = top_ids
        out["topn_scores"] = np.concatenate(scores) if scores else np.zeros((0, n), dtype=np.float32)
    return out
