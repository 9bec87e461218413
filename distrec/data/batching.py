"""Batching helpers shared by training, evaluation and prediction: left padding and its positions."""

from __future__ import annotations

import numpy as np
import torch


def left_pad(sequences, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad int sequences to ``(B, T)`` ids and a ``(B, T)`` attention mask.

    Left padding puts every sequence's last token in the last column, which is where the
    answer is predicted (CTR) and where a response ends (generation).
    """
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, s in enumerate(sequences):
        if len(s):
            ids[i, longest - len(s) :] = torch.as_tensor(np.asarray(s), dtype=torch.long)
            mask[i, longest - len(s) :] = 1
    return ids, mask


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def right_pad(sequences, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad int sequences (each at most ``width`` long) with 0 to ``(B, width)`` int64 ids
    and a ``(B, width)`` bool mask; the layout of a DIN history (oldest first)."""
    ids = torch.zeros((len(sequences), width), dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for i, s in enumerate(sequences):
        if len(s) > width:
            raise ValueError(f"row {i} has {len(s)} entries, more than the width {width}")
        ids[i, : len(s)] = torch.as_tensor(np.asarray(s), dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask
