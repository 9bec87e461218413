"""Wrapping a prompt in the tokenizer's chat template."""

from __future__ import annotations


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, prompt: str, use_chat_template: bool) -> str:
    """The text the model reads before the answer/response.

    With ``use_chat_template`` and a tokenizer that has a chat template: the prompt as a single
    user turn plus the assistant generation header. Otherwise the prompt unchanged. The
    answer (" Yes"/" No") or response text follows the returned string directly.
    """
    if not (use_chat_template and has_chat_template(tokenizer)):
        return prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
