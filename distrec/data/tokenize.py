"""Samples -> token ids + labels, with history truncation to fit ``prompt.max_length``.

Shapes (per sample, lists of python ints, no padding; the collator pads):

- CTR: ``input_ids`` = prompt ids + [answer id]; ``labels`` = -100 everywhere except the last
  position, which holds the answer id (" Yes" or " No"). Causal-LM models shift labels
  internally, so the answer is predicted from the last prompt token.
- Generative: ``input_ids`` = prompt ids + response ids + [eos]; ``labels`` = -100 on the
  prompt, the response ids and eos after it. Prompt and response are tokenised separately
  and concatenated, so the response ids do not depend on the prompt (BPE merges can't cross
  the boundary) and the factual and counterfactual rows of CFT end in identical ids.

Truncation: when prompt + answer/response exceeds ``max_length``, the OLDEST shown history
items are dropped (estimate, then gallop/bisect on how many), never the target or the
answer. A sample that cannot fit with no history at all raises :class:`DataError` naming it.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Mapping, Optional, Sequence

from distrec.config import PromptConfig
from distrec.data.prompts import (
    ANSWER_NO,
    ANSWER_YES,
    Catalog,
    build_counterfactual_prompt,
    build_ctr_prompt,
    build_generative_prompt,
    drop_oldest,
    generative_response,
    has_chat_template,
    render,
    shown_positions,
)
from distrec.errors import DataError, ModelError

IGNORE_INDEX = -100
_CTR_KEYS = ("input_ids", "labels", "label", "n_history_shown", "n_truncated", "shown_item_ids")
NO_MARKERS = ("", "")
_GEN_KEYS = ("input_ids", "labels", "n_history_shown", "n_truncated")


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def answer_words(tokenizer, cfg: PromptConfig) -> tuple[str, str]:
    """The configured answer words, or the natural ones for how the prompt ends.

    A chat template's assistant header ends with a newline, after which a model writes "Yes";
    a plain prompt ends mid-line, where the natural next token is " Yes" (leading space).
    """
    chat = _templated(tokenizer, cfg)
    yes = cfg.answer_yes if cfg.answer_yes is not None else (ANSWER_YES.strip() if chat else ANSWER_YES)
    no = cfg.answer_no if cfg.answer_no is not None else (ANSWER_NO.strip() if chat else ANSWER_NO)
    return yes, no


def ctr_label_ids(tokenizer, cfg: PromptConfig) -> tuple[int, int]:
    """``(yes_id, no_id)`` for this tokenizer and prompt configuration."""
    return label_token_ids(tokenizer, *answer_words(tokenizer, cfg))


def label_token_ids(tokenizer, yes: str = ANSWER_YES, no: str = ANSWER_NO) -> tuple[int, int]:
    """``(yes_id, no_id)``: the single tokens the CTR head compares, looked up, never hard-coded.

    Raises ModelError when an answer is not exactly one token (or both map to one id): the
    P(yes) score needs one logit per answer at the answer position.
    """
    found = []
    for word in (yes, no):
        ids = tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            pieces = tokenizer.convert_ids_to_tokens(ids)
            raise ModelError(
                f"tokenizer {_tokenizer_name(tokenizer)!r} encodes the answer {word!r} as "
                f"{len(ids)} tokens {pieces} (ids {ids}); the CTR label must be exactly one "
                "token. Pick answer words that are single tokens for this tokenizer (the "
                "answer words are set by prompt.answer_yes / prompt.answer_no, e.g. 'Yes' "
                "without the leading space)."
            )
        found.append(ids[0])
    if found[0] == found[1]:
        raise ModelError(
            f"tokenizer {_tokenizer_name(tokenizer)!r} maps both answers {yes!r} and {no!r} "
            f"to the same id {found[0]}"
        )
    return found[0], found[1]


def _templated(tokenizer, cfg: PromptConfig) -> bool:
    return bool(cfg.use_chat_template and has_chat_template(tokenizer))


def _encode_prompt(tokenizer, text: str, templated: bool) -> list[int]:
    # A chat template writes BOS itself; otherwise let the tokenizer add its special tokens.
    return tokenizer.encode(text, add_special_tokens=not templated)


def _fit(
    n_items: int,
    encode_with_drop: Callable[[int], list[int]],
    budget: int,
    where: str,
    n_tail: int,
    max_length: int,
    first_ids: Optional[list[int]] = None,
) -> tuple[int, list[int]]:
    """Fewest oldest items to drop so the prompt fits ``budget`` tokens: ``(n_drop, ids)``.

    One encode when it fits already (the common case). Otherwise the lengths with all and
    with no items give tokens per item, hence a guess; the search gallops from the guess
    until it brackets the answer, then bisects. The prompt length is non-increasing in the
    number dropped, so the bracket (``lo`` too long, ``hi`` fits) stays valid; with titles of
    similar length this takes 2-3 extra encodes instead of log2(n).
    """
    ids = first_ids if first_ids is not None else encode_with_drop(0)
    if len(ids) <= budget:
        return 0, ids
    bare = encode_with_drop(n_items) if n_items else ids
    if len(bare) > budget:
        raise DataError(
            f"{where}: the prompt is {len(bare)} tokens even with no history items, plus "
            f"{n_tail} answer/response tokens = {len(bare) + n_tail} > prompt.max_length="
            f"{max_length}; raise prompt.max_length or shorten the item titles"
        )
    per_item = (len(ids) - len(bare)) / n_items
    probe = math.ceil((len(ids) - budget) / per_item) if per_item > 0 else n_items
    lo, hi, best = 0, n_items, bare
    step, direction, bisect = 1, 0, False
    while hi - lo > 1:
        probe = min(max((lo + hi) // 2 if bisect else probe, lo + 1), hi - 1)
        trial = encode_with_drop(probe)
        new_direction = -1 if len(trial) <= budget else 1
        if new_direction < 0:
            hi, best = probe, trial
        else:
            lo = probe
        bisect = bisect or (direction != 0 and new_direction != direction)
        direction = new_direction
        probe += direction * step
        step *= 2
    return hi, best


def _sample_name(sample: Mapping) -> str:
    return f"sample_id {sample.get('sample_id')}"


# ----------------------------------------------------------------------------------- CTR


def _ctr_positions(sample: Mapping, cfg: PromptConfig, history_indices) -> list[int]:
    if history_indices is None:
        history_indices = sample.get("history_indices")
    return shown_positions(len(sample["history_item_ids"]), cfg.history_k, history_indices)


def ctr_prompt_text(
    sample: Mapping,
    catalog: Catalog,
    tokenizer,
    cfg: PromptConfig,
    history_indices: Optional[Sequence[int]] = None,
    n_drop: int = 0,
    markers: tuple[str, str] = NO_MARKERS,
) -> str:
    """The rendered CTR prompt (chat template applied if configured) with ``n_drop`` oldest
    shown items left out. ``history_indices`` defaults to the sample's own column, if any.
    ``markers``: SPA's (history, target) placeholder texts, appended after each shown item."""
    positions = drop_oldest(_ctr_positions(sample, cfg, history_indices), n_drop)
    prompt = build_ctr_prompt(sample, catalog, cfg.history_k, positions, hist_marker=markers[0],
                              target_marker=markers[1])
    return render(tokenizer, prompt, cfg.use_chat_template)


def tokenize_ctr(
    sample: Mapping,
    catalog: Catalog,
    tokenizer,
    cfg: PromptConfig,
    yes_id: int,
    no_id: int,
    history_indices: Optional[Sequence[int]] = None,
    *,
    prompt_ids: Optional[list[int]] = None,
    markers: tuple[str, str] = NO_MARKERS,
) -> dict:
    """One CTR sample -> ``input_ids``, ``labels``, ``label``, ``n_history_shown``, ``n_truncated``,
    ``shown_item_ids`` (the history items the prompt shows, in prompt order, after truncation).

    ``prompt_ids``: the already-encoded untruncated prompt (the batched path encodes many at
    once); recomputed when None.
    """
    label = int(sample["label"])
    if label not in (0, 1):
        raise DataError(f"{_sample_name(sample)}: label must be 0 or 1, got {label}")
    positions = _ctr_positions(sample, cfg, history_indices)
    templated = _templated(tokenizer, cfg)

    def encode_with_drop(n_drop: int) -> list[int]:
        text = ctr_prompt_text(sample, catalog, tokenizer, cfg, positions, n_drop, markers)
        return _encode_prompt(tokenizer, text, templated)

    n_drop, ids = _fit(
        len(positions), encode_with_drop, cfg.max_length - 1, _sample_name(sample), 1,
        cfg.max_length, prompt_ids,
    )
    answer = yes_id if label == 1 else no_id
    history = sample["history_item_ids"]
    return {
        "input_ids": ids + [answer],
        "labels": [IGNORE_INDEX] * len(ids) + [answer],
        "label": label,
        "n_history_shown": len(positions) - n_drop,
        "n_truncated": n_drop,
        "shown_item_ids": [int(history[p]) for p in drop_oldest(positions, n_drop)],
    }


# ---------------------------------------------------------------------------- generative


def _gen_base_drop(sample: Mapping, cfg: PromptConfig) -> int:
    return max(0, len(sample["history_item_ids"]) - cfg.history_k)


def generative_prompt_text(
    sample: Mapping,
    catalog: Catalog,
    tokenizer,
    cfg: PromptConfig,
    counterfactual: bool,
    n_drop: int = 0,
) -> str:
    """The rendered factual (last ``history_k`` items, minus ``n_drop`` oldest) or
    counterfactual (no history) prompt."""
    if counterfactual:
        prompt, _ = build_counterfactual_prompt(sample, catalog, same_preamble=cfg.cf_preamble == "same")
    else:
        prompt, _ = build_generative_prompt(sample, catalog, _gen_base_drop(sample, cfg) + n_drop)
    return render(tokenizer, prompt, cfg.use_chat_template)


def response_ids(sample: Mapping, catalog: Catalog, tokenizer) -> list[int]:
    """Response tokens + EOS, encoded alone (identical for factual and counterfactual)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ModelError(
            f"tokenizer {_tokenizer_name(tokenizer)!r} has no eos_token; generative training "
            "labels end with EOS"
        )
    return tokenizer.encode(generative_response(sample, catalog), add_special_tokens=False) + [eos]


def tokenize_generative(
    sample: Mapping,
    catalog: Catalog,
    tokenizer,
    cfg: PromptConfig,
    counterfactual: bool = False,
    *,
    prompt_ids: Optional[list[int]] = None,
) -> dict:
    """One generative sample -> ``input_ids``, ``labels``, ``n_history_shown``, ``n_truncated``."""
    templated = _templated(tokenizer, cfg)
    resp = response_ids(sample, catalog, tokenizer)
    n_items = 0 if counterfactual else len(sample["history_item_ids"]) - _gen_base_drop(sample, cfg)

    def encode_with_drop(n_drop: int) -> list[int]:
        text = generative_prompt_text(sample, catalog, tokenizer, cfg, counterfactual, n_drop)
        return _encode_prompt(tokenizer, text, templated)

    where = _sample_name(sample) + (" (counterfactual)" if counterfactual else "")
    n_drop, ids = _fit(
        n_items, encode_with_drop, cfg.max_length - len(resp), where, len(resp),
        cfg.max_length, prompt_ids,
    )
    return {
        "input_ids": ids + resp,
        "labels": [IGNORE_INDEX] * len(ids) + resp,
        "n_history_shown": n_items - n_drop,
        "n_truncated": n_drop,
    }


# ------------------------------------------------------------------------------- batches


def _columns(batch) -> dict[str, list]:
    """A pyarrow Table, a pandas DataFrame or a dict of columns -> dict of python lists."""
    if hasattr(batch, "to_pydict"):
        return batch.to_pydict()
    if hasattr(batch, "to_dict") and hasattr(batch, "columns"):
        return {c: batch[c].tolist() for c in batch.columns}
    return {c: list(v) for c, v in batch.items()}


def _encode_many(tokenizer, texts: list[str], templated: bool) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=not templated)["input_ids"]


def tokenize_batch(
    batch,
    catalog: Catalog,
    tokenizer,
    cfg: PromptConfig,
    task: Literal["ctr", "generative"],
    yes_id: Optional[int] = None,
    no_id: Optional[int] = None,
    with_counterfactual: bool = False,
    markers: tuple[str, str] = NO_MARKERS,
) -> dict[str, list]:
    """Tokenise a batch of samples (for Ray Data ``map_batches``): dict of equal-length lists.

    Keeps ``sample_id``, ``user_id``, ``item_id``, ``history_item_ids`` (and ``label`` for CTR)
    next to ``input_ids``, ``labels``, ``n_history_shown``, ``n_truncated`` (CTR:
    ``shown_item_ids``; ``markers`` as in :func:`ctr_prompt_text`). Generative with
    ``with_counterfactual`` adds ``cf_input_ids`` / ``cf_labels`` (CFT). The untruncated
    prompts are encoded in one batched call; only overlong samples are re-encoded.
    """
    cols = _columns(batch)
    n = len(cols["sample_id"])
    rows = [{c: v[i] for c, v in cols.items()} for i in range(n)]
    templated = _templated(tokenizer, cfg)
    out: dict[str, list] = {c: cols[c] for c in ("sample_id", "user_id", "item_id", "history_item_ids") if c in cols}

    def collect(results: list[dict], keys: tuple[str, ...], prefix: str = "") -> None:
        for key in keys:  # explicit keys: an empty batch still has every column
            out[prefix + key] = [r[key] for r in results]

    if task == "ctr":
        if yes_id is None or no_id is None:
            yes_id, no_id = ctr_label_ids(tokenizer, cfg)
        first = _encode_many(
            tokenizer, [ctr_prompt_text(r, catalog, tokenizer, cfg, markers=markers) for r in rows], templated
        )
        collect([
            tokenize_ctr(r, catalog, tokenizer, cfg, yes_id, no_id, prompt_ids=ids, markers=markers)
            for r, ids in zip(rows, first)
        ], _CTR_KEYS)
    elif task == "generative":
        for cf in (False, True) if with_counterfactual else (False,):
            first = _encode_many(
                tokenizer,
                [generative_prompt_text(r, catalog, tokenizer, cfg, cf) for r in rows],
                templated,
            )
            results = [
                tokenize_generative(r, catalog, tokenizer, cfg, cf, prompt_ids=ids)
                for r, ids in zip(rows, first)
            ]
            if cf:
                collect(results, ("input_ids", "labels"), prefix="cf_")
            else:
                collect(results, _GEN_KEYS)
    else:
        raise ValueError(f"task must be 'ctr' or 'generative', got {task!r}")
    return out
