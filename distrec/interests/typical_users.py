"""ESIM step 1: choose "typical" users by k-means ([P] a clustering picks typical samples;
everything else here is [I], methods.md §2.4).

Each user is represented by its latest sequence (the history of its latest sample by
``(timestamp, sample_id)``, plus that sample's target when ``include_target``): either the mean
of the backbone's K interest vectors on it, or the mean of its items' embeddings. faiss
``Kmeans(d, n_clusters, niter, seed)`` clusters the representations (single-threaded, so the
result only depends on the seed), then per centroid the ``m`` closest users are kept:

- ``assign="nearest"``: centroids in order, each takes the ``m`` closest users not yet taken;
  exactly ``min(n_clusters · m, n_users)`` users;
- ``assign="members"``: each centroid takes the ``m`` closest of its own members (users whose
  nearest centroid it is); a cluster with fewer members gives fewer users.

Distances are exact squared L2 in float64; ties go to the lower user id.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from distrec.model.interests.backbones import ItemIndex, pad_histories
from distrec.config.eimf import SelectionConfig


@dataclass(frozen=True)
class TypicalUsers:
    """The selection, sorted by user id."""

    user_ids: np.ndarray  # [n] int64, sorted
    clusters: np.ndarray  # [n] int64: the centroid each user was chosen for
    distances: np.ndarray  # [n] float64: squared L2 to that centroid
    centroids: np.ndarray  # [n_clusters, d] float32

    def __len__(self) -> int:
        return int(self.user_ids.size)

    def to_table(self) -> pa.Table:
        return pa.table(
            {
                "user_id": pa.array(self.user_ids, pa.int64()),
                "cluster": pa.array(self.clusters, pa.int64()),
                "distance": pa.array(self.distances, pa.float64()),
            }
        )


def latest_sequences(samples: pa.Table, history_len: int = 10, include_target: bool = True) -> tuple[np.ndarray, list[list[int]]]:
    """Per user (sorted ids), the item ids of its latest sample's history (+ target), oldest
    first, at most ``history_len`` (the most recent kept)."""
    uid = samples.column("user_id").to_numpy().astype(np.int64)
    ts = samples.column("timestamp").to_numpy() if "timestamp" in samples.column_names else np.zeros(len(uid))
    sid = samples.column("sample_id").to_numpy() if "sample_id" in samples.column_names else np.arange(len(uid))
    order = np.lexsort((sid, ts, uid))  # by user, then time, then sample id
    last = order[np.r_[uid[order][1:] != uid[order][:-1], True]] if len(order) else order
    hist = samples.column("history_item_ids").take(pa.array(last)).to_pylist()
    tgt = samples.column("item_id").to_numpy()[last]
    seqs = []
    for h, t in zip(hist, tgt):
        seq = list(h or []) + ([int(t)] if include_target else [])
        seqs.append(seq[-history_len:] if history_len > 0 else seq)
    return uid[last], seqs


@torch.no_grad()
def user_representations(model, samples: pa.Table, items: pa.Table | ItemIndex, cfg: SelectionConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(user_ids [U], reps [U, d] float32)`` from the trained backbone (see module doc)."""
    from distrec.interests.evaluate import _backbone, user_interests

    index = items if isinstance(items, ItemIndex) else ItemIndex.from_items(items)
    bb = _backbone(model)
    user_ids, seqs = latest_sequences(samples, cfg.history_len, cfg.include_target)
    hist, mask = pad_histories(seqs, index, bb.cfg.max_len)
    if cfg.representation == "interests":
        reps = user_interests(bb, hist, mask).mean(axis=1)
    elif cfg.representation == "items":
        emb = bb.item_emb.weight.detach().float().cpu().numpy()
        m = mask.astype(np.float32)
        reps = (emb[hist] * m[..., None]).sum(1) / np.maximum(m.sum(1, keepdims=True), 1.0)
    else:
        raise ValueError(f"selection.representation must be 'interests' or 'items', got {cfg.representation!r}")
    return user_ids, np.ascontiguousarray(reps, dtype=np.float32)


@contextlib.contextmanager
def _faiss_threads(n: int):
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def kmeans_centroids(reps: np.ndarray, n_clusters: int, niter: int = 20, seed: int = 42) -> np.ndarray:
    """faiss k-means centroids [n_clusters, d] (all points used, single-threaded)."""
    import faiss

    x = np.ascontiguousarray(reps, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < n_clusters:
        raise ValueError(f"k-means needs at least n_clusters={n_clusters} points, got shape {x.shape}")
    km = faiss.Kmeans(
        x.shape[1], n_clusters, niter=niter, seed=seed, verbose=False,
        max_points_per_centroid=max(256, x.shape[0]), min_points_per_centroid=1,
    )
    with _faiss_threads(1):
        km.train(x)
    return np.asarray(km.centroids, dtype=np.float32).copy()


def select_typical_users(
    user_ids: np.ndarray,
    reps: np.ndarray,
    n_clusters: int,
    per_cluster: int,
    niter: int = 20,
    seed: int = 42,
    assign: str = "nearest",
) -> TypicalUsers:
    """Cluster ``reps`` [U, d] and keep ``per_cluster`` users per centroid (see module doc)."""
    user_ids = np.asarray(user_ids, dtype=np.int64)
    if len(np.unique(user_ids)) != len(user_ids):
        raise ValueError("select_typical_users: duplicate user ids")
    centroids = kmeans_centroids(reps, n_clusters, niter, seed)
    x = reps.astype(np.float64)
    c = centroids.astype(np.float64)
    d2 = (x * x).sum(1)[:, None] - 2.0 * x @ c.T + (c * c).sum(1)[None, :]  # [U, C]
    d2 = np.maximum(d2, 0.0)
    chosen_rows, chosen_cluster = [], []
    if assign == "nearest":
        taken = np.zeros(len(user_ids), dtype=bool)
        for j in range(n_clusters):
            free = np.flatnonzero(~taken)
            order = free[np.lexsort((user_ids[free], d2[free, j]))][:per_cluster]
            taken[order] = True
            chosen_rows.extend(order)
            chosen_cluster.extend([j] * len(order))
    elif assign == "members":
        owner = np.argmin(d2, axis=1)  # first minimum: ties to the lower centroid
        for j in range(n_clusters):
            members = np.flatnonzero(owner == j)
            order = members[np.lexsort((user_ids[members], d2[members, j]))][:per_cluster]
            chosen_rows.extend(order)
            chosen_cluster.extend([j] * len(order))
    else:
        raise ValueError(f"selection.assign must be 'nearest' or 'members', got {assign!r}")
    rows = np.asarray(chosen_rows, dtype=np.int64)
    clusters = np.asarray(chosen_cluster, dtype=np.int64)
    by_user = np.argsort(user_ids[rows], kind="stable")
    rows, clusters = rows[by_user], clusters[by_user]
    return TypicalUsers(user_ids[rows], clusters, d2[rows, clusters], centroids)


def select_from_model(model, samples: pa.Table, items: pa.Table | ItemIndex, cfg: SelectionConfig) -> TypicalUsers:
    """Representations from ``model`` + :func:`select_typical_users` with ``cfg``."""
    user_ids, reps = user_representations(model, samples, items, cfg)
    return select_typical_users(user_ids, reps, cfg.n_clusters, cfg.per_cluster, cfg.niter, cfg.seed, cfg.assign)


__all__ = [
    "TypicalUsers",
    "kmeans_centroids",
    "latest_sequences",
    "select_from_model",
    "select_typical_users",
    "user_representations",
]
