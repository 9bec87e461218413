"""The CTR prompt (ReLLa layout): profile, rated history, target question, Yes/No instruction.

The model reads the prompt and the label is the single token right after it: the answer
text is ``" Yes"`` / ``" No"`` (leading space), see :func:`distrec.data.tokenize.label_token_ids`.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from distrec.data.prompts.catalog import Catalog
from distrec.errors import DataError

ANSWER_YES = " Yes"
ANSWER_NO = " No"


def stars(rating: float) -> str:
    """``4.0 -> "4 stars"``, ``3.5 -> "3.5 stars"``, ``1.0 -> "1 star"``."""
    value = float(rating)
    return f"{value:g} star" + ("" if value == 1 else "s")


def shown_positions(
    n_history: int, k: int, history_indices: Optional[Sequence[int]] = None
) -> list[int]:
    """Positions into the history (0 = oldest) that the prompt shows, in display order.

    ``history_indices`` None: the most recent ``k``, oldest first. Otherwise exactly the given
    positions in the given order (e.g. SUBR's retrieved items); ``k`` is then not applied.
    """
    if history_indices is None:
        if k <= 0:
            raise ValueError(f"k must be > 0, got {k}")
        return list(range(max(0, n_history - k), n_history))
    positions = [int(i) for i in history_indices]
    bad = [i for i in positions if not 0 <= i < n_history]
    if bad or len(set(positions)) != len(positions):
        raise DataError(
            f"history_indices {positions} must be distinct positions in 0..{n_history - 1}"
        )
    return positions


def drop_oldest(positions: Sequence[int], n_drop: int) -> list[int]:
    """``positions`` without its ``n_drop`` oldest (smallest) entries, display order kept."""
    if n_drop <= 0:
        return list(positions)
    if n_drop >= len(positions):
        return []
    cutoff = sorted(positions)[n_drop]
    return [p for p in positions if p >= cutoff]


def build_ctr_prompt(
    sample: Mapping,
    catalog: Catalog,
    k: int,
    history_indices: Optional[Sequence[int]] = None,
    *,
    hist_marker: str = "",
    target_marker: str = "",
) -> str:
    """The Yes/No prompt for one CTR sample (a row of ``schema.CTR_SAMPLES``).

    Shows the last ``k`` history items (chronological), or the positions in
    ``history_indices``. ``hist_marker`` / ``target_marker`` (e.g. ``" [hist]"``,
    ``" [target]"`` for ReLLaX SPA) are appended after each history line's rating and after
    the target title. Items are numbered from 1; an empty history drops the list entirely.
    The "oldest to most recent" phrase appears only when the shown items are in time order.
    """
    item_ids = sample["history_item_ids"]
    ratings = sample["history_ratings"]
    if len(item_ids) != len(ratings):
        raise DataError(
            f"sample {sample.get('sample_id')}: {len(item_ids)} history items but "
            f"{len(ratings)} history ratings"
        )
    positions = shown_positions(len(item_ids), k, history_indices)
    plural = catalog.item_plural
    lines = []
    profile = catalog.profile_sentence(sample["user_id"])
    if profile:
        lines.append(profile)
    if positions:
        in_time_order = all(a < b for a, b in zip(positions, positions[1:]))
        order = ", listed from oldest to most recent" if in_time_order else ""
        lines.append(f"The user rated the following {plural}{order}:")
        for n, pos in enumerate(positions, start=1):
            title = catalog.title(item_ids[pos])
            lines.append(f"{n}. {title} ({stars(ratings[pos])}){hist_marker}")
        lines.append(f"More stars mean the user liked the {catalog.item_noun} more.")
        lead = "Based on these ratings, will"
    else:
        lead = "Will"
    target = catalog.title(sample["item_id"])
    lines.append(f'{lead} the user like the {catalog.item_noun} "{target}"{target_marker}?')
    lines.append("Answer with only Yes or No.")
    return "\n".join(lines)
