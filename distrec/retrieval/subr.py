"""SUBR: semantic user-behaviour retrieval (ReLLa/ReLLaX, methods.md §3.4).

For each CTR sample, among the user's **earlier** behaviours only (the sample's
``history_item_ids``, oldest first), keep the ``K`` items most similar to the target item,
then order them for the prompt. The output is ``history_indices``: positions into
``history_item_ids`` (so ratings and any other per-position field follow for free).

**Item space** (:func:`build_space`): item vectors (from :mod:`distrec.retrieval.encoders`),
optionally reduced with sklearn PCA to ``pca_dim`` (default 512, capped at
``min(n_items, input dim)``; fitted on the whole item table, rows in item_id order, with
``random_state=seed``), then L2-normalised when ``similarity == "cosine"`` (cosine = dot of
unit vectors). ``pca_dim=None`` keeps the raw vectors; note that PCA centres the data, so
even a full-rank PCA changes cosine similarities.

**Ranking rule.** Score = ``v_h · v_t`` in the item space. A history position ranks above
another when its score is higher; **ties go to the more recent position** (the later one in
``history_item_ids``; a re-consumed item counts at its most recent occurrence first). This is
one total order, so the result is unique. Candidates: the whole history, or only its last
``candidates`` positions when set. Output size ``min(K, |candidates|)``; with
``K >= |candidates|`` every candidate is kept (= the recent-K set).

**Orders** (``order``): ``chronological`` (ReLLa's ``sequential``, the default: ascending
position), ``similarity`` (ReLLa's ``high``: best first, by the rule above), ``recent``
(ReLLa's ``simple``: no retrieval, the last K positions, chronological).

**Vectorised paths** (``method``), all exact and equal to a brute-force loop (tests):
samples are sorted by candidate count and cut into groups whose padded ``[g, L]`` score block
fits a fixed budget; per group the scores come from

- ``matrix``: the precomputed item×item similarity matrix (a gather; the fastest path for
  catalogues up to ``max_matrix_items``, e.g. ML-1M's 3,706 items = 55 MB);
- ``gather``: ``einsum`` over the gathered history vectors (any catalogue size; memory is
  ``g·L·d`` per group, not ``n_items²``);
- ``faiss``: ``IndexFlatIP.compute_distance_subset`` (faiss inner products restricted to
  each sample's candidate set; multi-threaded in C++);

and the top-K is one ``argpartition`` over unique int64 keys
``(order-preserving int of the float32 score) << 32 | position``, so the recency tie-break
costs nothing. ``auto`` = ``matrix`` when ``n_items <= max_matrix_items`` else ``gather``.
Floating-point sums differ slightly between the paths (~1e-7), which can only matter for
scores equal to within that; exact ties (identical vectors, repeated items) are handled the
same way by every path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distrec.config.subr import SubrConfig
from distrec.errors import DataError

_PAD = np.iinfo(np.int64).min


# ----------------------------------------------------------------------------- item space


@dataclass
class ItemSpace:
    """Item vectors ready for scoring: ``item_ids`` sorted, ``vectors[i]`` belongs to ``item_ids[i]``."""

    item_ids: np.ndarray  # int64 [n], sorted, unique
    vectors: np.ndarray  # float32 [n, d], C-contiguous
    similarity: str
    info: dict[str, Any] = field(default_factory=dict)
    _matrix: np.ndarray | None = field(default=None, repr=False, compare=False)
    _faiss: Any = field(default=None, repr=False, compare=False)
    _lut: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:  # ship vectors only; caches are rebuilt
        state = dict(self.__dict__)
        state["_matrix"] = None
        state["_faiss"] = None
        state["_lut"] = None
        return state

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    def rows(self, ids: np.ndarray, what: str = "item") -> np.ndarray:
        """Row of each id; DataError naming the first id that has no vector."""
        ids = np.asarray(ids, dtype=np.int64)
        lut = self._lookup_table()
        if lut is not None:  # dense ids: one gather instead of a binary search per id
            inside = (ids >= 0) & (ids < lut.size)
            pos = np.where(inside, lut[np.where(inside, ids, 0)], -1)
            if (pos < 0).any():
                first = int(ids[np.flatnonzero(pos < 0)[0]])
                raise DataError(f"SUBR: {what} id {first} has no vector (not in the item table of {self.n_items} items)")
            return pos.astype(np.int64)
        pos = np.searchsorted(self.item_ids, ids)
        pos_c = np.minimum(pos, max(self.n_items - 1, 0))
        bad = (pos >= self.n_items) | (self.item_ids[pos_c] != ids) if self.n_items else np.ones(ids.shape, bool)
        if bad.any():
            first = int(ids[np.flatnonzero(bad)[0]])
            raise DataError(f"SUBR: {what} id {first} has no vector (not in the item table of {self.n_items} items)")
        return pos_c.astype(np.int64)

    def _lookup_table(self) -> np.ndarray | None:
        """id -> row table when ids are non-negative and not too sparse (max id < 8n + 2^20)."""
        if self._lut is None and self.n_items and self.item_ids[0] >= 0:
            top = int(self.item_ids[-1])
            if top < 8 * self.n_items + (1 << 20):
                lut = np.full(top + 1, -1, dtype=np.int32)
                lut[self.item_ids] = np.arange(self.n_items, dtype=np.int32)
                self._lut = lut
        return self._lut

    def matrix(self) -> np.ndarray:
        """The item×item score matrix (float32 [n, n]), computed once."""
        if self._matrix is None:
            self._matrix = self.vectors @ self.vectors.T
        return self._matrix

    def faiss_index(self) -> Any:
        if self._faiss is None:
            import faiss

            index = faiss.IndexFlatIP(self.vectors.shape[1])
            index.add(self.vectors)
            self._faiss = index
        return self._faiss


def fit_pca(vectors: np.ndarray, dim: int, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """sklearn PCA to ``min(dim, n_items, input dim)`` components; returns (reduced float32, info)."""
    from sklearn.decomposition import PCA

    n, d = vectors.shape
    n_comp = int(min(dim, n, d))
    pca = PCA(n_components=n_comp, random_state=seed)
    reduced = pca.fit_transform(vectors)
    info = {
        "n_components": n_comp,
        "requested": int(dim),
        "explained_variance_ratio": float(np.sum(pca.explained_variance_ratio_)),
    }
    return np.ascontiguousarray(reduced, dtype=np.float32), info


def build_space(item_ids: np.ndarray, vectors: np.ndarray, cfg: SubrConfig) -> ItemSpace:
    """PCA (if ``cfg.pca_dim``) and normalisation (if cosine) of raw item vectors."""
    ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    vec = np.asarray(vectors, dtype=np.float32)
    if vec.ndim != 2 or vec.shape[0] != ids.size:
        raise DataError(f"SUBR: {ids.size} item ids but vectors of shape {vec.shape}")
    if ids.size == 0:
        raise DataError("SUBR: empty item table")
    if not np.isfinite(vec).all():
        raise DataError("SUBR: item vectors contain NaN or inf")
    order = np.argsort(ids, kind="stable")
    ids, vec = ids[order], vec[order]
    if np.any(np.diff(ids) == 0):
        raise DataError(f"SUBR: item id {int(ids[np.flatnonzero(np.diff(ids) == 0)[0]])} has two vectors")
    info: dict[str, Any] = {"n_items": int(ids.size), "input_dim": int(vec.shape[1]), "pca": None}
    if cfg.pca_dim is not None:
        vec, info["pca"] = fit_pca(vec, cfg.pca_dim, cfg.seed)
    if cfg.similarity == "cosine":
        vec = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
    info["dim"] = int(vec.shape[1])
    info["similarity"] = cfg.similarity
    return ItemSpace(ids, np.ascontiguousarray(vec, dtype=np.float32), cfg.similarity, info)


# ----------------------------------------------------------------------------- core


def _score_keys(scores: np.ndarray) -> np.ndarray:
    """Order-preserving int64 of float32 scores (-0.0 and +0.0 equal)."""
    bits = np.ascontiguousarray(scores, dtype=np.float32).view(np.int32).astype(np.int64)
    mag = bits & 0x7FFFFFFF
    return np.where(bits >= 0, mag, -mag)


def resolve_method(space: ItemSpace, cfg: SubrConfig) -> str:
    if cfg.method != "auto":
        return cfg.method
    return "matrix" if space.n_items <= cfg.max_matrix_items else "gather"


def _group_scores(method: str, space: ItemSpace, hist_rows: np.ndarray, target_rows: np.ndarray) -> np.ndarray:
    """Scores ``[g, L]`` of padded history rows against each row's target."""
    if method == "matrix":
        return space.matrix()[target_rows[:, None], hist_rows]
    if method == "gather":
        v = space.vectors
        return np.einsum("gld,gd->gl", v[hist_rows], v[target_rows], optimize=False)
    if method == "faiss":
        import faiss

        g, width = hist_rows.shape
        queries = np.ascontiguousarray(space.vectors[target_rows])
        labels = np.ascontiguousarray(hist_rows, dtype=np.int64)
        dist = np.empty((g, width), dtype=np.float32)
        space.faiss_index().compute_distance_subset(
            int(g), faiss.swig_ptr(queries), int(width), faiss.swig_ptr(dist), faiss.swig_ptr(labels)
        )
        return dist
    raise ValueError(f"unknown SUBR method {method!r}")


def retrieve_arrays(
    offsets: np.ndarray,
    hist_ids: np.ndarray,
    target_ids: np.ndarray,
    space: ItemSpace | None,
    cfg: SubrConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """The core on flat arrays: sample ``i``'s history is ``hist_ids[offsets[i]:offsets[i+1]]``.

    Returns ``(values int32, out_offsets int64 [n+1])``: sample ``i``'s retrieved positions
    (into its own history) are ``values[out_offsets[i]:out_offsets[i+1]]``.
    ``space`` may be None only for ``order="recent"``.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = offsets.size - 1
    lengths = np.diff(offsets)
    cand = lengths if cfg.candidates is None else np.minimum(lengths, cfg.candidates)
    shift = lengths - cand  # position of the first candidate in the history
    k = cfg.k
    n_out = np.minimum(cand, k)
    out_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(n_out, out=out_off[1:])
    values = np.empty(int(out_off[-1]), dtype=np.int32)
    # Default fill: the last n_out positions (recent order; also every row kept whole).
    rank_in_row = np.arange(values.size, dtype=np.int64) - np.repeat(out_off[:-1], n_out)
    values[:] = rank_in_row + np.repeat(lengths - n_out, n_out)
    if cfg.order == "recent" or n == 0:
        return values, out_off
    if space is None:
        raise ValueError("SUBR: an item space is needed unless order='recent'")

    hist_rows = space.rows(hist_ids, "history item")
    target_rows = space.rows(target_ids, "target item")
    if cfg.order == "chronological":
        todo = np.flatnonzero(cand > k)
    else:
        todo = np.flatnonzero(cand > 1)
    if todo.size == 0:
        return values, out_off
    method = resolve_method(space, cfg)
    budget = (1 << 18) if method == "matrix" else max(1024, (1 << 21) // space.vectors.shape[1])
    todo = todo[np.argsort(cand[todo], kind="stable")]
    start = offsets[:-1] + shift
    i = 0
    while i < todo.size:
        j = min(todo.size, i + max(1, budget // max(int(cand[todo[i]]), 1)))
        width = int(cand[todo[j - 1]])
        j = min(j, i + max(1, budget // width))
        width = int(cand[todo[j - 1]])
        rows = todo[i:j]
        i = j
        pos = np.arange(width, dtype=np.int64)
        valid = pos[None, :] < cand[rows][:, None]
        flat = np.where(valid, start[rows][:, None] + pos[None, :], 0)
        scores = _group_scores(method, space, hist_rows[flat], target_rows[rows])
        keys = (_score_keys(scores) << 32) | pos[None, :]
        keys[~valid] = _PAD
        kk = min(k, width)
        if width > kk:
            top = np.argpartition(keys, width - kk, axis=1)[:, width - kk :]
        else:
            top = np.broadcast_to(pos[None, :], keys.shape).copy()
        if cfg.order == "chronological":
            top.sort(axis=1)
        else:
            top_keys = np.take_along_axis(keys, top, axis=1)
            top = np.take_along_axis(top, np.argsort(top_keys, axis=1)[:, ::-1], axis=1)
        keep = np.arange(kk)[None, :] < n_out[rows][:, None]  # valid entries come first in each row
        dest = out_off[:-1][rows][:, None] + np.arange(kk)[None, :]
        values[dest[keep]] = (top + shift[rows][:, None])[keep]
    return values, out_off


def _list_parts(col: pa.ChunkedArray | pa.Array, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(offsets int64 [n+1], flat int64 values) of a list column, respecting slicing and nulls."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        raise DataError(f"SUBR: column {what} must be a list, got {arr.type}")
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if flat.size != offsets[-1]:
        raise DataError(f"SUBR: column {what} holds null items")
    return offsets, flat


def retrieve_table(
    table: pa.Table,
    item_vectors: ItemSpace | tuple[np.ndarray, np.ndarray] | None,
    cfg: SubrConfig,
) -> pa.Table:
    """``table`` (CTR samples) plus ``history_indices: list<int32>`` (replaced if present).

    ``item_vectors``: a prepared :class:`ItemSpace`, or raw ``(item_ids, vectors)`` that go
    through :func:`build_space` first (PCA fitted on exactly those items); None only for
    ``order="recent"``. Pure: no Ray, no files.
    """
    for col in ("item_id", "history_item_ids"):
        if col not in table.column_names:
            raise DataError(f"SUBR: samples table lacks column '{col}'; found {table.column_names}")
    space = item_vectors
    if isinstance(item_vectors, tuple):
        space = build_space(item_vectors[0], item_vectors[1], cfg)
    offsets, flat = _list_parts(table.column("history_item_ids"), "history_item_ids")
    targets = table.column("item_id").to_numpy().astype(np.int64)
    values, out_off = retrieve_arrays(offsets, flat, targets, space, cfg)  # type: ignore[arg-type]
    arr = pa.ListArray.from_arrays(pa.array(out_off.astype(np.int32)), pa.array(values, type=pa.int32()))
    if "history_indices" in table.column_names:
        table = table.drop_columns(["history_indices"])
    return table.append_column("history_indices", arr)
