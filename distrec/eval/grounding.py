"""BIGRec-style grounding of generated titles to catalogue items (CFT evaluation, spec §1.7).

Pipeline (the authors' ``embedding.py``, ``evaluate_acc.py``, ``eval_acc_2.py``)::

    item_vecs = last_token_states(model, tok, [normalise_title(t) for t in titles])
    index     = ItemIndex(item_ids, item_vecs, titles)
    beams     = generate_beams(model, tok, prompts, num_beams=5)          # [N][5] strings
    gen_vecs  = last_token_states(model, tok, [clean_title(b) for row in beams for b in row])
    rankings  = index.ground(gen_vecs, k)                                  # [N*5] id lists
    per_sample = [rankings[i*5:(i+1)*5] for i in range(N)]
    ranks     = grounded_ranks(per_sample, targets, titles, mode="top_beam" | "interleave")
    rank_metrics(ranks)                                                    # HR@K, NDCG@K

Vectors are the final-layer hidden state of the last real token (left padding), compared
by exact L2 distance. Differences from the authors' scripts, on purpose:

- explicit ``position_ids`` (each text starts at position 0), so a text's vector does not
  depend on how much padding its batch needed; the authors pass none, which shifts the
  positions of left-padded texts. This makes "generated string == a title" ground to that
  title at rank 0 independently of batching.
- duplicate titles: a ranking keeps only the best-ranked item of each title
  (``dedupe=True``), and a target's rank is that of the first ranked item carrying its
  title, so every item sharing the title gets that same (best) rank and duplicates do not
  push other items down. ``dedupe=False`` reproduces ``evaluate_acc.py`` exactly (full
  ranking; target rank = best rank of any item with its title; duplicates occupy ranks).
  In a run this is the switch ``eval.merge_duplicate_titles`` (default true: merged as
  above; false: items matched by id, duplicates occupy ranks). Titles reach grounding
  already told apart where any field can (``distrec.data.titles.display_titles``), so the
  switch only matters for items that no text can distinguish.
- one normal form on both sides: the authors strip every outer ``"`` from the generated text
  and embed the catalogue titles raw, so a title with its own quotes (``"Weird Al" …``,
  ``Cymbal 16"``) never matches its exact response. Here the generated text loses only the
  response format (:func:`clean_title`) and both sides pass through
  :func:`~distrec.data.titles.normalise_title`.
- ``min_new_tokens`` (default 4, as CFT's inference) is passed to ``generate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from distrec.data.prompts.generative import title_from_response
from distrec.metrics.ranking_metrics import interleave_beams
from distrec.data.batching import left_pad, position_ids_for

GROUNDING_MODES = ("top_beam", "interleave")

# -------------------------------------------------------------------------- text → vector


def clean_title(text: str) -> str:
    """The title a generated text names, in the normal form catalogue titles are embedded in.

    :func:`~distrec.data.prompts.generative.title_from_response`: the first line without the
    response's one pair of quotes (quotes inside the title stay), normalised; "" when the
    text names nothing (such a beam is never grounded)."""
    return title_from_response(text)


def _fallback_token(tokenizer) -> int:
    for tid in (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id):
        if tid is not None:
            return int(tid)
    return 0


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - parameterless wrapper
        return torch.device("cpu")


def last_token_states(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 32,
    device: torch.device | str | None = None,
    add_special_tokens: bool = True,
) -> np.ndarray:
    """Final-layer hidden state of each text's last token: ``[N, H]`` float32.

    Works with any HF causal LM: one forward per batch with ``output_hidden_states=True``
    and ``logits_to_keep=1`` (the LM head runs on one column only); ``hidden_states[-1]`` is
    the output after the final norm, as in the authors' ``embedding.py``. Texts are
    tokenised one by one and left-padded here (the tokenizer needs no pad token and is not
    modified), with explicit ``position_ids``. An empty text is embedded as the single EOS
    token. The model is put in eval mode for the call and restored afterwards.

    Args:
        texts: N strings (clean them first, e.g. :func:`clean_title`).
        batch_size: texts per forward.
        device: where to run; None = the model's device.
        add_special_tokens: passed to the tokenizer (BOS for models that use one).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _fallback_token(tokenizer)
    fallback = _fallback_token(tokenizer)
    chunks: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = list(texts[start:start + batch_size])
                encoded = tokenizer(batch, add_special_tokens=add_special_tokens)["input_ids"]
                encoded = [ids if len(ids) else [fallback] for ids in encoded]
                ids, mask = left_pad(encoded, pad_id)
                ids, mask = ids.to(device), mask.to(device)
                out = model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=position_ids_for(mask),
                    output_hidden_states=True,
                    logits_to_keep=1,
                    use_cache=False,
                )
                chunks.append(out.hidden_states[-1][:, -1, :].float().cpu().numpy())
    finally:
        model.train(was_training)
    if not chunks:
        hidden = getattr(getattr(model, "config", None), "hidden_size", 0)
        return np.zeros((0, hidden), dtype=np.float32)
    return np.concatenate(chunks, 0).astype(np.float32, copy=False)


# ------------------------------------------------------------------------------ search


def _title_map(item_ids: Sequence[int], titles) -> dict[int, str] | None:
    """Titles as ``{item_id: title}``: a mapping, or a sequence aligned with ``item_ids``."""
    if titles is None:
        return None
    if isinstance(titles, Mapping):
        return {int(k): v for k, v in titles.items()}
    titles = list(titles)
    if len(titles) != len(item_ids):
        raise ValueError(f"{len(titles)} titles for {len(item_ids)} items")
    return {int(i): t for i, t in zip(item_ids, titles)}


class ItemIndex:
    """Exact L2 nearest-neighbour search over item vectors (``faiss.IndexFlatL2``).

    Args:
        item_ids: ``[M]`` integer item ids, row-aligned with ``item_vectors``.
        item_vectors: ``[M, H]`` vectors (stored as float32).
        titles: optional ``{item_id: title}`` or a ``[M]`` sequence aligned with
            ``item_ids``; used by :meth:`ground` to de-duplicate titles.
    """

    def __init__(self, item_ids: Sequence[int], item_vectors: np.ndarray, titles=None):
        import faiss

        vecs = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32))
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        if vecs.ndim != 2 or vecs.shape[0] != ids.shape[0]:
            raise ValueError(f"item_vectors must be [M, H] with M = len(item_ids); got {vecs.shape}, {ids.shape}")
        if np.unique(ids).size != ids.size:
            raise ValueError("item_ids must be unique")
        self.item_ids = ids
        self.dim = vecs.shape[1]
        from distrec.eval.faiss_gpu import on_gpus_if_any

        index = faiss.IndexFlatL2(self.dim)
        index.add(vecs)
        self._index = on_gpus_if_any(index)
        self.titles = _title_map(ids, titles)

    def __len__(self) -> int:
        return int(self.item_ids.size)

    def search(self, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest items per query, nearest first.

        Returns:
            ``(item_ids [N, k] int64, distances [N, k] float32)``; distances are L2 (not
            squared). ``k`` is capped at the catalogue size.
        """
        q = np.ascontiguousarray(np.asarray(query_vectors, dtype=np.float32))
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query_vectors must be [N, {self.dim}], got {q.shape}")
        k = min(int(k), len(self))
        if k < 1 or q.shape[0] == 0:
            return np.zeros((q.shape[0], 0), np.int64), np.zeros((q.shape[0], 0), np.float32)
        sq, rows = self._index.search(q, k)
        return self.item_ids[rows], np.sqrt(np.maximum(sq, 0.0)).astype(np.float32)

    def ground(
        self,
        generated_vectors: np.ndarray,
        k: int,
        titles=None,
        dedupe: bool = True,
    ) -> list[list[int]]:
        """Ranked item ids per generated vector.

        With titles (argument, else those given at construction) and ``dedupe``, each
        ranking holds ``k`` distinct titles at the rank of their nearest item (the search goes
        deeper by the number of duplicate items), each named by its title's first item id in
        catalogue order: identical titles embed to vectors that differ only by float rounding,
        so which of them is nearer must not decide the id reported. A target sharing its
        title is found by :func:`rank_of` at that same rank.
        Without titles, or with ``dedupe=False``, it is the plain top-``k`` search.

        Returns:
            N lists of at most ``k`` item ids, best first.
        """
        tmap = _title_map(self.item_ids, titles) if titles is not None else self.titles
        if tmap is None or not dedupe:
            ids, _ = self.search(generated_vectors, k)
            return [row.tolist() for row in ids]
        first_of_title: dict[str, int] = {}
        for i in self.item_ids:
            first_of_title.setdefault(tmap[int(i)], int(i))
        n_dup = len(self) - len(first_of_title)
        ids, _ = self.search(generated_vectors, k + n_dup)
        out: list[list[int]] = []
        for row in ids:
            seen: set[str] = set()
            kept: list[int] = []
            for item in row.tolist():
                title = tmap[item]
                if title in seen:
                    continue
                seen.add(title)
                kept.append(first_of_title[title])
                if len(kept) >= k:
                    break
            out.append(kept)
        return out


# -------------------------------------------------------------------------------- ranks


def rank_of(target_item: int, ranking: Sequence[int], titles: Mapping[int, str] | None = None) -> int:
    """0-based rank of the first item in ``ranking`` whose title equals the target's title
    (so all items sharing a title share the best rank); −1 if none. Without ``titles``,
    matches by item id."""
    if titles is None:
        for r, item in enumerate(ranking):
            if item == target_item:
                return r
        return -1
    want = titles[target_item]
    for r, item in enumerate(ranking):
        if titles[item] == want:
            return r
    return -1


def _canonical_ids(titles: Mapping[int, str]) -> dict[int, int]:
    """Each item → the first item id (in ``titles`` order) carrying the same title."""
    first: dict[str, int] = {}
    return {int(i): first.setdefault(t, int(i)) for i, t in titles.items()}


def grounded_ranks(
    beam_rankings_per_sample: Sequence[Sequence[Sequence[int]]],
    targets: Sequence[int],
    titles: Mapping[int, str] | None = None,
    mode: str = "top_beam",
    cut: int = 500,
) -> np.ndarray:
    """0-based rank of each target for :func:`~distrec.metrics.ranking_metrics.rank_metrics`.

    Args:
        beam_rankings_per_sample: per sample, per beam, a ranking of item ids (best first,
            e.g. from :meth:`ItemIndex.ground`), beams in generation order (beam 0 = top).
        targets: the true item id per sample.
        titles: ``{item_id: title}``; a target matches any item with its title. None =
            match by id.
        mode: ``"top_beam"`` (original BIGRec grounding, ``evaluate_acc.py``: the top
            beam's ranking) or ``"interleave"`` (the "adjusted grounding",
            ``eval_acc_2.py``: beams merged rank-major by
            :func:`~distrec.metrics.ranking_metrics.interleave_beams`, de-duplicated, cut at
            ``cut``). Before interleaving, items are mapped to one representative per title,
            so one title cannot appear twice in the merged list via different item ids.
        cut: length of the interleaved list (``"interleave"`` only).

    Returns:
        int64 ``[N]``, −1 where the target is not in the (cut) ranking.
    """
    if mode not in GROUNDING_MODES:
        raise ValueError(f"mode must be one of {GROUNDING_MODES}, got {mode!r}")
    if len(beam_rankings_per_sample) != len(targets):
        raise ValueError(f"{len(beam_rankings_per_sample)} samples but {len(targets)} targets")
    canon = _canonical_ids(titles) if titles is not None else None
    ranks = np.empty(len(targets), dtype=np.int64)
    for i, (beams, target) in enumerate(zip(beam_rankings_per_sample, targets)):
        ranks[i] = rank_of(int(target), final_ranking(beams, mode, canon, cut), titles)
    return ranks


def final_ranking(beams: Sequence[Sequence[int]], mode: str, canon: Mapping[int, int] | None = None,
                  cut: int = 500) -> list[int]:
    """One sample's item ranking from its beams' rankings, by ``mode`` (see :func:`grounded_ranks`).

    ``canon``: item → representative item of its title (``interleave`` merges on it), or None."""
    if mode == "top_beam":
        return list(beams[0]) if len(beams) else []
    if canon is not None:
        beams = [[canon[int(x)] for x in beam] for beam in beams]
    return interleave_beams(beams, cut=cut)


def canonical_ids(titles: Mapping[int, str]) -> dict[int, int]:
    """Each item → the first item id (in ``titles`` order) carrying the same title."""
    return _canonical_ids(titles)


# ---------------------------------------------------------------------------- generation


def generate_beams(
    model,
    tokenizer,
    prompts: Sequence[str],
    num_beams: int = 5,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    add_special_tokens: bool = True,
    min_new_tokens: int = 4,
    **generate_kwargs,
) -> list[list[str]]:
    """Beam-search continuations: ``num_beams`` decoded strings per prompt, best first.

    Prompts are tokenised one by one and left-padded here (all prompts of a batch end in the
    last input column), so the continuation is everything after the input width; it is
    decoded with special tokens skipped (EOS/pad removed). Greedy-deterministic
    (``do_sample=False``). ``min_new_tokens`` (default 4, as CFT's inference; in a run
    ``eval.min_new_tokens``) keeps EOS out of the first tokens. Extra ``generate_kwargs`` go to
    ``model.generate`` (the authors also use ``length_penalty=1.0``, ``max_new_tokens=128``).

    Returns:
        ``[len(prompts)][num_beams]`` strings (the raw continuation; apply
        :func:`clean_title` before grounding).
    """
    if batch_size < 1 or num_beams < 1:
        raise ValueError("batch_size and num_beams must be >= 1")
    device = _model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _fallback_token(tokenizer)
    kwargs = {
        "num_beams": num_beams,
        "num_return_sequences": num_beams,
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": min_new_tokens,
        "do_sample": False,
        "pad_token_id": pad_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    kwargs.update(generate_kwargs)
    results: list[list[str]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                batch = list(prompts[start:start + batch_size])
                encoded = tokenizer(batch, add_special_tokens=add_special_tokens)["input_ids"]
                ids, mask = left_pad(encoded, pad_id)
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
                texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
                n_ret = kwargs["num_return_sequences"]
                results.extend(texts[j:j + n_ret] for j in range(0, len(texts), n_ret))
    finally:
        model.train(was_training)
    return results
