"""A micro-batch's common prompt prefix computed once: the trunk, then each row's tail, in one packed row.

Prompts from one template open with the same tokens (chat header, instruction): about 28 of
157 tokens of the ML-100K CTR prompts, 89 of 141 of the generative ones. Under causal attention
the hidden states of those tokens do not depend on what follows them, so one forward can run
them once and every row's remainder (its tail) after them: the trunk and the tails are packed
into a single row without padding, and an attention function (:func:`trunk_attention`) lets
every tail token attend to its trunk columns and to its own row's earlier tokens. Each token
thus sees the same tokens at the same positions as in its own left-padded row, so the logits
equal the plain forward's up to float rounding, and backward sums the trunk's gradient over the
rows, as the plain forward does over identical copies. The linear layers run ``(B − 1) · P``
fewer tokens for B rows sharing P (and no padding); attention costs what the separate rows'
does. One forward call, so ZeRO-3 gathers the parameters once, and activation checkpointing
recomputes it like any other. Computing attention over a shared prefix once: Hydragen
(Juravsky et al., 2024, §3); here in training, with the prefix's gradient.

Not exact with dropout > 0: the trunk draws one dropout mask for all rows where the plain
forward draws one per row (each row's loss is still an unbiased sample). Per-instance inputs
(generated CFLoRA, SPA soft prompts) make the rows differ from the first token: no trunk.

Groups: CFT's factual and counterfactual prompts are two groups, each with its own common
prefix. The trunk holds group 0's prefix, then each other group's prefix from where it departs
from group 0's (positions continue there); each tail token sees its group's trunk columns and
the earlier real tokens of its own group in its own row (:func:`trunk_forward`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

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
    """Each group's rows after its prefix, side by side: ``ids, positions, real [B, W]`` and each
    group's column span."""
    ids, positions, real, spans, start = [], [], [], [], 0
    for grp, p in zip(groups, prefix):
        pos = position_ids_for(grp.mask)
        ids.append(grp.ids[:, p:])
        positions.append(pos[:, p:])
        real.append(grp.mask[:, p:].bool() & (pos[:, p:] >= p))
        width = grp.ids.shape[1] - p
        spans.append((start, start + width))
        start += width
    return torch.cat(ids, 1), torch.cat(positions, 1), torch.cat(real, 1), spans


ATTENTION = "distrec_trunk"
"""The attention implementation :func:`enable_trunk_attention` gives a model: SDPA, and trunk
attention for a forward called with a ``distrec_trunk=`` layout."""


@dataclass
class TailGroup:
    """One group's tail slots in the packed row: ``index [B, W_g]``, the packed column of each slot
    (0 where it holds no real token); ``trunk [L_g]``, the trunk columns the group sees;
    ``mask [B, 1, W_g, L_g + W_g]``, what each slot sees: those trunk columns, then the row's slots."""

    index: torch.Tensor
    trunk: torch.Tensor
    mask: torch.Tensor


@dataclass
class Layout:
    """Where the packed row's tokens sit: the trunk (columns ``0..length−1``, attending through
    ``trunk_mask [L, L]``), then every row's real tail tokens in row order, each row's groups side by
    side. ``groups``: one :class:`TailGroup` per group, so a tail token never scores the other
    groups' columns; ``slots``: the (row, column) indices of the real slots of the groups'
    concatenated ``[B, W]`` columns, in packed order. ``calls`` counts the attention layers that
    read it, so a model without trunk attention is caught."""

    length: int
    trunk_mask: torch.Tensor
    groups: list[TailGroup]
    slots: tuple[torch.Tensor, torch.Tensor]
    calls: int = 0


def trunk_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                    distrec_trunk: Layout | None = None, **kwargs):
    """Hugging Face attention function (``AttentionInterface``): SDPA, or, for a packed row
    ``query [1, H, N, d]``, ``key``/``value`` ``[1, H_kv, N, d]`` with a :class:`Layout`, the trunk's
    causal attention plus, group by group, every tail slot's attention over its group's trunk
    columns and its row's slots of that group. Returns ``([1, N, H, d], None)`` as SDPA's function does."""
    if distrec_trunk is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    lay = distrec_trunk
    lay.calls += 1
    q = query[0]
    k, v = (repeat_kv(x, module.num_key_value_groups)[0] for x in (key, value))
    n = lay.length
    sdpa = torch.nn.functional.scaled_dot_product_attention
    trunk = sdpa(q[None, :, :n], k[None, :, :n], v[None, :, :n], attn_mask=lay.trunk_mask[None, None],
                 dropout_p=dropout, scale=scaling)[0]
    tails = []
    for g in lay.groups:
        rows = g.index.shape[0]
        q_t, k_t, v_t = (x[:, g.index].transpose(0, 1) for x in (q, k, v))  # [B, H, W_g, d]
        if len(g.trunk):
            k_t = torch.cat([k[None, :, g.trunk].expand(rows, -1, -1, -1), k_t], 2)
            v_t = torch.cat([v[None, :, g.trunk].expand(rows, -1, -1, -1), v_t], 2)
        tails.append(sdpa(q_t, k_t, v_t, attn_mask=g.mask, dropout_p=dropout, scale=scaling).transpose(1, 2))
    out = torch.cat([trunk.transpose(0, 1), torch.cat(tails, 1)[lay.slots]], 0)
    return out[None], None


def enable_trunk_attention(model) -> None:
    """Give a Hugging Face model :func:`trunk_attention` (SDPA for every other forward); registers
    it under :data:`ATTENTION` with Hugging Face's attention and mask interfaces."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, trunk_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    model.set_attn_implementation(ATTENTION)


def trunk_forward(model, groups: list[Group]) -> tuple[list[torch.Tensor], int] | None:
    """One forward of a packed row: the trunk once, then every row's tails, no padding.

    Args:
        model: a causal LM with :func:`enable_trunk_attention` (or a DeepSpeed engine or PEFT
            wrapper around one), taking ``input_ids``, ``position_ids``, ``logits_to_keep`` and the
            ``distrec_trunk`` layout, which Hugging Face passes down to the attention function.
        groups: one :class:`Group` per kind of row, the same B instances in every group.

    Returns:
        ``([logits [B, last_g, V] float32 per group], forward tokens)``: the logits of each group's
        last ``last_g`` columns (right-aligned as in its left-padded rows; a column before a row's
        tail holds some other token's logits, as a padding column would), and the real tokens the
        forward ran; or None when there is nothing to share (one row, or no common prefix), so
        the caller runs its plain forward.

    Raises:
        RuntimeError: the model's attention did not read the layout (no :func:`enable_trunk_attention`).
    """
    n_rows = groups[0].ids.shape[0]
    prefix = [group_prefix(g.ids, g.mask, g.need, g.last) for g in groups]
    if n_rows < 2 or sum(prefix) == 0:
        return None
    heads = [g.ids[0, g.ids.shape[1] - int(g.mask[0].sum()):][:p] for g, p in zip(groups, prefix)]
    trunk_ids, trunk_pos, visible, trunk_mask = _trunk(heads)
    device, n_trunk = trunk_ids.device, len(trunk_ids)

    ids, positions, real, spans = _tails(groups, prefix)
    slots = real.nonzero(as_tuple=True)  # once here, not a boolean mask in every layer
    n_tail = len(slots[0])
    index = torch.zeros_like(ids)
    index[slots] = n_trunk + torch.arange(n_tail, device=device)
    tails = []
    for g, (start, end) in enumerate(spans):
        width, r = end - start, real[:, start:end]
        cols = torch.arange(width, device=device)
        own = ((cols[None, :] <= cols[:, None])[None] & r[:, None, :] & r[:, :, None]) | torch.eye(
            width, dtype=torch.bool, device=device)[None]
        trunk = visible[g].nonzero()[:, 0]
        sees = r[:, :, None].expand(-1, -1, len(trunk))
        tails.append(TailGroup(index[:, start:end], trunk, torch.cat([sees, own], 2)[:, None]))
    layout = Layout(n_trunk, trunk_mask, tails, slots)
    keep = torch.cat([torch.arange(end - g.last, end, device=device) for (_, end), g in zip(spans, groups)])
    packed_ids, packed_pos = torch.cat([trunk_ids, ids[slots]])[None], torch.cat([trunk_pos, positions[slots]])[None]
    out = model(input_ids=packed_ids, position_ids=packed_pos, logits_to_keep=index[:, keep].reshape(-1),
                use_cache=False, distrec_trunk=layout)
    if layout.calls == 0:
        raise RuntimeError("the model's attention ignored the trunk layout: call "
                           "distrec.objectives.shared_prefix.enable_trunk_attention(model) first")
    logits = out.logits.float().reshape(n_rows, len(keep), -1)
    return list(logits.split([g.last for g in groups], 1)), n_trunk + n_tail
