"""Grounded next-item evaluation inside the training workers (BIGRec / CFT protocol).

Every rank generates beams for its share of the test prompts, the fine-tuned model embeds every
item title (last-token final hidden state), generated titles are grounded to their nearest
items by L2 distance (faiss), and HR@K / NDCG@K come from the 0-based rank of the true item.
Under ZeRO-3 every forward is a collective, so the rows and the item titles are dealt to ranks
in equal, padded shares and ``generate`` runs with ``synced_gpus``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from distrec.eval.grounding import (
    ItemIndex,
    clean_title,
    generate_beams,
    grounded_ranks,
    last_token_states,
)
from distrec.eval.ranking_metrics import rank_metrics


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


def grounded_metrics(model, tokenizer, strategy, rows: dict, titles: dict[int, str], *, num_beams: int = 5,
                     max_new_tokens: int = 64, batch_size: int = 8, mode: str = "top_beam",
                     ks: Sequence[int] = (1, 3, 5, 10, 20)) -> tuple[dict[str, float], list[str]]:
    """HR@K / NDCG@K of grounded beam-search generations for every row of a split.

    Also returns a few readable examples (this rank's first rows: top beam, grounded item,
    target) for the run's TensorBoard text tab.
    """
    rank, world = strategy.rank, strategy.world_size
    sync = {"synced_gpus": world > 1}

    item_ids = np.array(sorted(titles), dtype=np.int64)
    share, n_items = equal_share(len(item_ids), rank, world)
    states = last_token_states(model, tokenizer, [titles[int(i)] for i in item_ids[share]], batch_size=batch_size,
                               add_special_tokens=False)
    parts = strategy.all_gather_object((share[:n_items].tolist(), states[:n_items]))
    order = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
    vectors = np.concatenate([p[1] for p in parts])[np.argsort(order)]
    index = ItemIndex(item_ids, vectors, titles=titles)

    rows_share, n_rows = equal_share(len(rows["sample_id"]), rank, world)
    prompts = prompt_texts(tokenizer, rows["input_ids"][rows_share], rows["labels"][rows_share])
    beams = generate_beams(model, tokenizer, prompts, num_beams=num_beams, max_new_tokens=max_new_tokens,
                           batch_size=batch_size, add_special_tokens=False, **sync)
    flat = [clean_title(text) for per_row in beams for text in per_row]
    generated = last_token_states(model, tokenizer, flat, batch_size=batch_size, add_special_tokens=False)
    rankings = index.ground(generated, k=max(ks), titles=titles)
    per_row = [rankings[i * num_beams:(i + 1) * num_beams] for i in range(len(prompts))][:n_rows]
    targets = rows["item_id"][rows_share][:n_rows]
    local = grounded_ranks(per_row, targets, titles=titles, mode=mode).tolist()
    ranks = np.array([r for part in strategy.all_gather_object(local) for r in part])
    examples = [f"generated: {beams[i][0]!r} -> grounded: {titles[per_row[i][0][0]]!r}; "
                f"target: {titles[int(targets[i])]!r} (rank {local[i]})" for i in range(min(4, n_rows))]
    return {**rank_metrics(ranks, ks=tuple(ks)), "n": int(len(ranks))}, examples
