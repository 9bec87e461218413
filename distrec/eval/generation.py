"""Grounded next-item evaluation inside the training workers (BIGRec / CFT protocol).

Every rank generates beams for its share of the test prompts, the fine-tuned model embeds every
item title (last-token final hidden state), generated titles are grounded to their nearest
items by L2 distance (faiss), and HR@K / NDCG@K come from the 0-based rank of the true item.
Under ZeRO-3 every forward is a collective, so the rows and the item titles are dealt to ranks
in equal, padded shares and ``generate`` runs with ``synced_gpus``.

Catalogue titles and generated text pass through the same normal form
(:func:`distrec.data.titles.normalise_title`; generated text first loses the response format,
:func:`~distrec.eval.grounding.clean_title`), so a generation equal to a training response
grounds to its item at rank 0. A beam that names no title (empty, blanks, ``""``) is never
grounded: it ranks no item. Such beams are still embedded, so every rank runs the same forwards.
Their share is reported next to HR/NDCG: ``empty_rate`` (of all beams) and ``empty_top_rate``
(of top beams). A non-finite item or generation embedding stops the evaluation with an error
naming the split and the first item or sample (:mod:`distrec.metrics.finite`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from distrec.data.titles import normalise_title
from distrec.errors import DataError, ModelError
from distrec.metrics.finite import evaluation_point, require_finite
from distrec.eval.grounding import (
    ItemIndex,
    clean_title,
    canonical_ids,
    final_ranking,
    generate_beams,
    grounded_ranks,
    last_token_states,
)
from distrec.metrics.ranking_metrics import rank_metrics


def equal_share(n: int, rank: int, world: int) -> tuple[np.ndarray, int]:
    """Indices of this rank's round-robin share of ``n`` items, padded to ``ceil(n / world)``.

    Returns ``(indices, n_real)``; padding repeats index 0 (or the rank's first index).
    """
    per_rank = -(-n // world)
    idx = np.arange(rank, n, world)
    n_real = len(idx)
    fill = idx[0] if n_real else 0
    return np.concatenate([idx, np.full(per_rank - n_real, fill, dtype=np.int64)]).astype(np.int64), n_real


def prompt_texts(tokenizer, input_ids: Sequence, labels: Sequence) -> list[str]:
    """The prompt part (unlabelled tokens) of each tokenised generative row, as text."""
    texts = []
    for ids, lab in zip(input_ids, labels):
        ids, lab = np.asarray(ids), np.asarray(lab)
        texts.append(tokenizer.decode(ids[lab == -100].tolist(), skip_special_tokens=False))
    return texts


def catalogue_names(titles: dict[int, str]) -> dict[int, str]:
    """``{item_id: title}`` in the normal form generated text is compared in; DataError on an empty one."""
    names = {int(i): normalise_title(t) for i, t in titles.items()}
    empty = [i for i, t in names.items() if not t]
    if empty:
        raise DataError(f"grounding catalogue: item id {empty[0]} has an empty title")
    return names


def embed_catalogue(model, tokenizer, strategy, names: dict[int, str], batch_size: int, where: str):
    """``(item_ids [M] sorted, vectors [M, H])``; each rank embeds an equal share, all get all."""
    item_ids = np.array(sorted(names), dtype=np.int64)
    share, n_items = equal_share(len(item_ids), strategy.rank, strategy.world_size)
    states = last_token_states(model, tokenizer, [names[int(i)] for i in item_ids[share]], batch_size=batch_size,
                               add_special_tokens=False)
    parts = strategy.all_gather_object((share[:n_items].tolist(), states[:n_items]))
    order = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
    vectors = np.concatenate([p[1] for p in parts])[np.argsort(order)]
    require_finite(vectors, item_ids, where=where, what="item embedding", id_name="item id")
    return item_ids, vectors


def _require_finite_everywhere(strategy, vectors: np.ndarray, usable: np.ndarray, sample_ids, where: str) -> None:
    """Raise on every rank (one gather, so no rank waits in a later collective) when any rank's
    usable generation embeddings are not finite; ``sample_ids`` names this rank's rows."""
    bad = usable & ~np.isfinite(vectors).all(axis=1)
    local = (int(bad.sum()), int(usable.sum()), int(sample_ids[np.flatnonzero(bad)[0]]) if bad.any() else None)
    parts = strategy.all_gather_object(local)
    if any(p[0] for p in parts):
        n_bad, n = sum(p[0] for p in parts), sum(p[1] for p in parts)
        first = next(p[2] for p in parts if p[0])
        raise ModelError(
            f"{where}: {n_bad} of {n} generated-title embeddings are not finite; the first is of sample id "
            f"{first}. The model produced NaN or infinite outputs (diverged training or an overflow in low "
            "precision); metrics over them would be meaningless"
        )


class GroundedMetrics(NamedTuple):
    metrics: dict
    examples: list
    ranks: np.ndarray  # (n,) int64
    top_item_ids: list  # n lists of item ids, best first


@dataclass
class Grounded:
    """Beam search grounded to the catalogue, for ``n`` prompts of ``b`` beams each.

    ``texts``: n lists of b generated texts (beam 0 = top); ``rankings``: n lists of b item
    rankings (best first; empty for a beam that names no title); ``named``: ``[n, b]`` bool,
    the beam named a title; ``vectors``: ``[n·b, H]`` the generated titles' embeddings."""

    texts: list[list[str]]
    rankings: list[list[list[int]]]
    named: np.ndarray
    vectors: np.ndarray


def ground_prompts(model, tokenizer, index: ItemIndex, prompts: Sequence[str], *, num_beams: int,
                   max_new_tokens: int, min_new_tokens: int, batch_size: int, k: int, dedupe: bool,
                   synced_gpus: bool = False, check=None) -> Grounded:
    """Generate ``num_beams`` titles per prompt, embed them (last-token state) and ground each to
    its ``k`` nearest catalogue items (:meth:`ItemIndex.ground`). ``check(vectors, named)`` runs
    before grounding (the training workers' finiteness check across ranks)."""
    beams = generate_beams(model, tokenizer, list(prompts), num_beams=num_beams, max_new_tokens=max_new_tokens,
                           min_new_tokens=min_new_tokens, batch_size=batch_size, add_special_tokens=False,
                           synced_gpus=synced_gpus)
    flat = [clean_title(text) for per_row in beams for text in per_row]
    named = np.array([bool(t) for t in flat], dtype=bool)
    generated = last_token_states(model, tokenizer, flat, batch_size=batch_size, add_special_tokens=False)
    if check is not None:
        check(generated, named)
    rankings = index.ground(np.nan_to_num(generated), k=k, dedupe=dedupe)
    rankings = [ranking if ok else [] for ranking, ok in zip(rankings, named)]
    per_row = [rankings[i * num_beams:(i + 1) * num_beams] for i in range(len(prompts))]
    return Grounded(beams, per_row, named.reshape(len(prompts), num_beams), generated)


_SHARE_COLUMNS = ("sample_id", "item_id", "input_ids", "labels")


def grounded_metrics(model, tokenizer, strategy, rows, titles: dict[int, str], *, num_beams: int = 5,
                     max_new_tokens: int = 64, min_new_tokens: int = 4, batch_size: int = 8,
                     mode: str = "top_beam", ks: Sequence[int] = (1, 3, 5, 10, 20),
                     merge_duplicate_titles: bool = True, split: str = "test",
                     step: int | None = None) -> GroundedMetrics:
    """HR@K / NDCG@K of grounded beam-search generations for every row of a split.

    Args:
        rows: the split's columns (``sample_id``, ``item_id``, ``input_ids``, ``labels``) as a
            dict of arrays, or a reader with ``take(indices)`` and ``len()`` (the token shards'
            ``ShardRows``), of which each rank then reads only its own share.
        titles: ``{item_id: title}``, the catalogue (normalised here).
        min_new_tokens: passed to :func:`~distrec.eval.grounding.generate_beams` (``eval.min_new_tokens``).
        merge_duplicate_titles: items with the same title count as one (``eval.merge_duplicate_titles``;
            see :func:`~distrec.eval.grounding.grounded_ranks`); False matches items by id.
        split, step: where the evaluation runs, for error messages.

    Returns:
        :class:`GroundedMetrics` ``(metrics, examples, ranks, top_item_ids)``: ``hr@k``,
        ``ndcg@k``, ``empty_rate``, ``empty_top_rate`` and ``n``; a few readable examples (this
        rank's first rows: top beam, grounded item, target) for the run's TensorBoard text tab;
        the 0-based rank of every row's target (int64, in the order of ``rows``; -1 = not in
        the top ``max(ks)``); and every row's final ranking, cut at ``max(ks)``.

    Raises:
        ModelError: an item or generated-title embedding is NaN or infinite.
    """
    rank, world = strategy.rank, strategy.world_size
    where = evaluation_point(split, step)
    names = catalogue_names(titles)
    item_ids, vectors = embed_catalogue(model, tokenizer, strategy, names, batch_size, where)
    index = ItemIndex(item_ids, vectors, titles=names if merge_duplicate_titles else None)

    n_total = len(rows["sample_id"]) if isinstance(rows, dict) else len(rows)
    rows_share, n_rows = equal_share(n_total, rank, world)
    share = rows.take(rows_share) if hasattr(rows, "take") else {k: rows[k][rows_share] for k in _SHARE_COLUMNS}
    prompts = prompt_texts(tokenizer, share["input_ids"], share["labels"])
    real = np.repeat(np.arange(len(prompts)) < n_rows, num_beams)

    def check(generated: np.ndarray, named: np.ndarray) -> None:
        _require_finite_everywhere(strategy, generated, named & real,
                                   np.repeat(share["sample_id"], num_beams), where)

    grounded = ground_prompts(model, tokenizer, index, prompts, num_beams=num_beams, max_new_tokens=max_new_tokens,
                              min_new_tokens=min_new_tokens, batch_size=batch_size, k=max(ks),
                              dedupe=merge_duplicate_titles, synced_gpus=world > 1, check=check)
    beams, named = grounded.texts, grounded.named.reshape(-1)
    per_row = grounded.rankings[:n_rows]
    targets = share["item_id"][:n_rows]
    local = grounded_ranks(per_row, targets, titles=names if merge_duplicate_titles else None, mode=mode).tolist()
    canon = canonical_ids(names) if merge_duplicate_titles else None
    local_top = [final_ranking(beams_of_row, mode, canon)[:max(ks)] for beams_of_row in per_row]
    empty = (~named).reshape(len(prompts), num_beams)[:n_rows]
    ranks = np.full(n_total, -1, dtype=np.int64)
    top: list[list[int]] = [[] for _ in range(len(ranks))]
    n_empty = n_empty_top = 0
    for positions, part, part_top, beams_empty, tops_empty in strategy.all_gather_object(
            (rows_share[:n_rows].tolist(), local, local_top, int(empty.sum()), int(empty[:, 0].sum()))):
        ranks[positions] = part
        for position, items in zip(positions, part_top):
            top[position] = items
        n_empty, n_empty_top = n_empty + beams_empty, n_empty_top + tops_empty
    n = int(len(ranks))
    examples = [f"generated: {beams[i][0]!r} -> grounded: "
                f"{names[per_row[i][0][0]] if per_row[i][0] else '(nothing: empty)'!r}; "
                f"target: {names[int(targets[i])]!r} (rank {local[i]})" for i in range(min(4, n_rows))]
    metrics = {**rank_metrics(ranks, ks=tuple(ks)), "empty_rate": n_empty / max(n * num_beams, 1),
               "empty_top_rate": n_empty_top / max(n, 1), "n": n}
    return GroundedMetrics(metrics, examples, ranks, top)
