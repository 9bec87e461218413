"""CTR as next-token prediction of " Yes"/" No" (ReLLa/TALLRec), computed where it is needed.

Prompts are left-padded, so the answer-predicting position is the last column of every row;
the LM head runs on that one position only (``logits_to_keep=1``), not the whole sequence.

Training loss: ordinary LM cross-entropy of the answer token over the full vocabulary (what
the papers train). Prediction: ``P(yes) = softmax([z_no, z_yes])[1]`` at the same position.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distrec.data.batching import position_ids_for


def answer_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
    """``(B, V)`` logits of the token after each left-padded prompt ``(B, T)``; ``extra`` goes
    to the model (e.g. SPA's ``spa=`` inputs)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_for(attention_mask),
        logits_to_keep=1,
        use_cache=False,
        **extra,
    )
    return out.logits[:, -1, :].float()


def shared_answer_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                         ) -> tuple[torch.Tensor, int] | None:
    """:func:`answer_logits` with the rows' common prompt prefix computed once
    (``objectives.shared_prefix``): ``((B, V) logits, real tokens the forward ran)``, equal to
    :func:`answer_logits` up to float rounding; None when nothing is shared."""
    from distrec.objectives.shared_prefix import Group, trunk_forward

    got = trunk_forward(model, [Group(input_ids, attention_mask, 1, 1)])
    return None if got is None else (got[0][0][:, -1], got[1])


def ctr_loss_sum(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Summed answer-token cross-entropy over the batch (normalised later by the global count)."""
    return F.cross_entropy(logits, answer_ids, reduction="sum")


def p_yes(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """``(B,)`` probability of " Yes" from the 2-way softmax over the No/Yes logits."""
    return torch.softmax(logits[:, [no_id, yes_id]], dim=-1)[:, 1]
