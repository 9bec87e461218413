"""Global loss-token normalisation across gradient accumulation and data-parallel ranks.

A step's gradient must be ``∇ Σ_all ℓ / N_global`` where the sum and the count run over every
micro-batch of every rank in the step (OpenRLHF, torchtune). Averaging per-micro-batch means
instead weights short batches more, so accumulation k would not equal a k-times larger batch.

DeepSpeed divides each backward by ``grad_accum`` and averages gradients over ranks, so each
micro-batch's summed loss is multiplied by ``grad_accum · world / N_global`` before backward.
"""

from __future__ import annotations

import torch


def normalised(loss_sum: torch.Tensor, global_count: float, accumulation_scale: float) -> torch.Tensor:
    """Micro-batch loss to hand to ``engine.backward``."""
    return loss_sum * (accumulation_scale / max(global_count, 1.0))
