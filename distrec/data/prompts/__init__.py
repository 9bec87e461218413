"""Prompt builders: pure functions from a sample row plus a :class:`Catalog` to text.

- CTR (ReLLa layout, Yes/No answer): :func:`build_ctr_prompt`.
- Generative (BIGRec/Alpaca layout): :func:`build_generative_prompt`, and CFT's
  history-free twin :func:`build_counterfactual_prompt`.
- :func:`render` wraps a prompt in the tokenizer's chat template when asked.
"""

from distrec.data.prompts.catalog import ML1M_AGE_LABELS, Catalog, profile_sentence
from distrec.data.prompts.chat import has_chat_template, render
from distrec.data.prompts.ctr import (
    ANSWER_NO,
    ANSWER_YES,
    build_ctr_prompt,
    drop_oldest,
    shown_positions,
    stars,
)
from distrec.data.prompts.generative import (
    build_counterfactual_prompt,
    build_generative_prompt,
    generative_response,
    title_from_response,
)

__all__ = [
    "ANSWER_NO",
    "ANSWER_YES",
    "Catalog",
    "ML1M_AGE_LABELS",
    "build_counterfactual_prompt",
    "build_ctr_prompt",
    "build_generative_prompt",
    "drop_oldest",
    "generative_response",
    "has_chat_template",
    "profile_sentence",
    "render",
    "shown_positions",
    "stars",
    "title_from_response",
]
