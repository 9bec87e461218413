"""A micro-batch's common prompt prefix computed once: the trunk, kept as a KV cache.

Prompts from one template open with the same tokens (chat header, instruction): about 28 of
157 tokens of the ML-100K CTR prompts, 89 of 141 of the generative ones. Under causal attention
the hidden states of those tokens do not depend on what follows them, so the forward can run
them once (batch 1), keep their keys and values, and run every row's remainder (its tail)
against them. Each tail token sees the same tokens at the same positions as in its own
left-padded row, so its logits equal the plain forward's up to float rounding, and backward
sums the trunk's gradient over the rows, as the plain forward does over identical copies.
The saving is ``(B − 1) · P`` tokens of a micro-batch of B rows sharing P tokens, at the cost
of one more (short) forward call; attention does not grow. This is prefix caching used for
training: Hydragen (Juravsky et al., 2024, §3) computes attention over a shared prefix once.

Not exact with dropout > 0: the trunk draws one dropout mask for all rows where the plain
forward draws one per row (each row's loss is still an unbiased sample). Needs a model whose
layers see their inputs once per forward: activation checkpointing would recompute the tails
against a cache the first pass has already extended, and per-instance adapters (generated
CFLoRA, SPA soft prompts) make the prefix differ between rows.

Groups: CFT's factual and counterfactual prompts are two groups, each with its own common
prefix. The trunk row holds group 0's prefix, then each other group's prefix from where it
departs from group 0's (positions continue there); each tail token sees its group's trunk
columns and the earlier real tokens of its own group in its own row (:func:`trunk_forward`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distrec.data.batching import position_ids_for


@dataclass
class Group:
    """Left-padded rows ``ids``/``mask`` ``[B, T]`` of one kind; ``need``: per row (``[B]``) or for
    all rows, how many trailing tokens must stay out of the trunk (those whose logits are read);
    ``last``: how many trailing columns of logits to return."""

    ids: torch.Tensor
    mask: torch.Tensor
    need: torch.Tensor | int
    last: int


def group_prefix(ids: torch.Tensor, mask: torch.Tensor, need: torch.Tensor | int, last: int = 1) -> int:
    """Leading real tokens every row of ``ids``/``mask`` ``[B, T]`` (left-padded) has in common,
    capped so that each row keeps its last ``need`` tokens and the last ``last`` columns lie
    after the prefix of every row. 0 when nothing is shared."""
    lens = mask.sum(1)
    width = int(lens.min())
    if width == 0:
        return 0
    first = (ids.shape[1] - lens)[:, None] + torch.arange(width, device=ids.device)
    tokens = ids.gather(1, first)
    common = int((tokens == tokens[:1]).all(0).long().cumprod(0).sum())
    cap = min(int((lens - need).min()), ids.shape[1] - last)
    return max(0, min(common, cap))


def _trunk(prefixes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids [L], positions [L], visible [G, L] bool, mask [L, L] bool)`` of the trunk row built
    from the groups' prefix tokens; ``visible[g]``: the trunk columns group g's tokens see."""
    base = prefixes[0]
    ids, positions, blocks = [base], [torch.arange(len(base), device=base.device)], []
    for p in prefixes[1:]:
        n = min(len(p), len(base))
        same = int((p[:n] == base[:n]).long().cumprod(0).sum())
        ids.append(p[same:])
        positions.append(torch.arange(same, len(p), device=base.device))
        blocks.append(same)
    ids_t, pos_t = torch.cat(ids), torch.cat(positions)
    width = len(ids_t)
    cols = torch.arange(width, device=base.device)
    visible = [cols < len(base)]
    block_of = torch.zeros(width, dtype=torch.long, device=base.device)
    start = len(base)
    for g, same in enumerate(blocks, start=1):
        end = start + len(ids[g])
        visible.append((cols < same) | ((cols >= start) & (cols < end)))
        block_of[start:end] = g
        start = end
    visible_t = torch.stack(visible)
    mask = visible_t[block_of] & (cols[None, :] <= cols[:, None])
    return ids_t, pos_t, visible_t, mask


def _tails(groups: list[Group], prefix: list[int]):
    """Each group's rows after its prefix, side by side: ``ids, positions, real [B, W]``, the
    column's group ``[W]`` and each group's column span."""
    ids, positions, real, owner, spans, start = [], [], [], [], [], 0
    for g, (grp, p) in enumerate(zip(groups, prefix)):
        pos = position_ids_for(grp.mask)
        ids.append(grp.ids[:, p:])
        positions.append(pos[:, p:])
        real.append(grp.mask[:, p:].bool() & (pos[:, p:] >= p))
        width = grp.ids.shape[1] - p
        owner.append(torch.full((width,), g, dtype=torch.long, device=grp.ids.device))
        spans.append((start, start + width))
        start += width
    return torch.cat(ids, 1), torch.cat(positions, 1), torch.cat(real, 1), torch.cat(owner), spans


def trunk_forward(model, groups: list[Group]) -> tuple[list[torch.Tensor], int] | None:
    """Two forward calls for rows that share prefixes: the trunk once, then every row's tails.

    Args:
        model: a causal LM taking ``input_ids``, ``position_ids``, a 4-D boolean
            ``attention_mask`` (True = attend), ``past_key_values`` and ``logits_to_keep``
            (a Hugging Face model, or a DeepSpeed engine or PEFT wrapper around one).
        groups: one :class:`Group` per kind of row, the same B instances in every group.

    Returns:
        ``([logits [B, last_g, V] float32 per group], forward tokens)``: the logits of each group's
        last ``last_g`` columns (right-aligned as in its left-padded rows), and the real tokens the
        two calls ran; or None when there is nothing to share (one row, or no common prefix), so
        the caller runs its plain forward.
    """
    n_rows = groups[0].ids.shape[0]
    prefix = [group_prefix(g.ids, g.mask, g.need, g.last) for g in groups]
    if n_rows < 2 or sum(prefix) == 0:
        return None
    heads = [g.ids[0, g.ids.shape[1] - int(g.mask[0].sum()):][:p] for g, p in zip(groups, prefix)]
    trunk_ids, trunk_pos, visible, trunk_mask = _trunk(heads)
    device = trunk_ids.device
    cache = model(input_ids=trunk_ids[None], position_ids=trunk_pos[None], attention_mask=trunk_mask[None, None],
                  use_cache=True, logits_to_keep=torch.zeros(0, dtype=torch.long, device=device)).past_key_values
    cache.batch_repeat_interleave(n_rows)

    ids, positions, real, owner, spans = _tails(groups, prefix)
    width = ids.shape[1]
    cols = torch.arange(width, device=device)
    own = (cols[None, :] <= cols[:, None]) & (owner[None, :] == owner[:, None])
    own = (own[None] & real[:, None, :] & real[:, :, None]) | torch.eye(width, dtype=torch.bool, device=device)[None]
    sees_trunk = visible[owner][None] & real[:, :, None]
    mask = torch.cat([sees_trunk, own], 2)[:, None]
    keep = torch.cat([torch.arange(end - g.last, end, device=device) for (_, end), g in zip(spans, groups)])
    logits = model(input_ids=ids, position_ids=positions, attention_mask=mask, past_key_values=cache,
                   use_cache=True, logits_to_keep=keep).logits.float()
    return list(logits.split([g.last for g in groups], 1)), len(trunk_ids) + int(real.sum())
