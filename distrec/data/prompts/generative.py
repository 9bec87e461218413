"""Generative next-item prompts (BIGRec/Alpaca layout) and CFT's history-free twin.

Factual: preamble, ``### Instruction:``, ``### Input:`` (the quoted history titles),
``### Response:``. Counterfactual: the same with the Input block deleted entirely and the
no-input preamble (CFT, spec §1.3-1.4), or on request the factual preamble. Both return the
identical response string: the quoted target title plus a newline, so the response tokens can
be aligned column for column.
:func:`title_from_response` reads a title back out of a generated response (its inverse).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from distrec.data.prompts.catalog import Catalog
from distrec.data.titles import normalise_title

_PREAMBLE_WITH_INPUT = (
    "Below is a task together with some context about the user. "
    "Write a response that completes the task."
)
_PREAMBLE_NO_INPUT = "Below is a task. Write a response that completes the task."


def quote(title: str) -> str:
    return f'"{title}"'


def generative_response(sample: Mapping, catalog: Catalog) -> str:
    """The training target: ``'"<target title>"\\n'``."""
    return quote(catalog.title(sample["item_id"])) + "\n"


def title_from_response(text: str) -> str:
    """The title a generated response names; "" when it names none.

    The inverse of :func:`generative_response`: the first non-blank line, without the one
    pair of double quotes the response format puts round the title (a leading quote is
    removed, and then one trailing quote), in :func:`~distrec.data.titles.normalise_title`
    form. Quotes that belong to the title stay: the response ``""Weird Al" Live!"`` (and a
    newline) names ``"Weird Al" Live!``. For every title t in normal form,
    ``title_from_response(quote(t) + "\\n") == t``.
    """
    lines = text.strip().splitlines()
    first = lines[0].strip() if lines else ""
    if first.startswith('"'):
        first = first[1:]
        if first.endswith('"'):
            first = first[:-1]
    return normalise_title(first)


def _instruction(catalog: Catalog) -> str:
    noun = catalog.item_noun
    return (
        f"Based on the {catalog.item_plural} the user interacted with recently, "
        f"name one new {noun} the user is likely to want next."
    )


def _prompt(catalog: Catalog, history_block: Optional[str], preamble: Optional[str] = None) -> str:
    if preamble is None:
        preamble = _PREAMBLE_WITH_INPUT if history_block is not None else _PREAMBLE_NO_INPUT
    parts = [preamble, ""]
    parts += ["### Instruction:", _instruction(catalog), ""]
    if history_block is not None:
        parts += ["### Input:", history_block, ""]
    parts += ["### Response:", ""]
    return "\n".join(parts)


def build_generative_prompt(
    sample: Mapping, catalog: Catalog, n_drop: int = 0
) -> tuple[str, str]:
    """``(prompt, response)`` for one generative sample (``schema.GENERATIVE_SAMPLES`` row).

    The history (oldest first) is listed as quoted, comma-separated titles; ``n_drop`` leaves
    out that many of the oldest (truncation). An empty history still keeps the Input block.
    """
    ids: Sequence[int] = list(sample["history_item_ids"])[max(0, n_drop):]
    titles = ", ".join(quote(catalog.title(i)) for i in ids)
    block = f"The user interacted with these {catalog.item_plural}, oldest first: {titles}"
    return _prompt(catalog, block), generative_response(sample, catalog)


def build_counterfactual_prompt(sample: Mapping, catalog: Catalog, same_preamble: bool = False) -> tuple[str, str]:
    """``(prompt, response)`` with no history at all; the response equals the factual one.

    The preamble is the no-input one (the authors' code), or with ``same_preamble`` the factual
    prompt's, so that the prompt is the factual one with its Input block deleted and nothing else
    changed: the two share every token before that block.
    """
    preamble = _PREAMBLE_WITH_INPUT if same_preamble else _PREAMBLE_NO_INPUT
    return _prompt(catalog, None, preamble), generative_response(sample, catalog)
