"""The adapter interface every parameter-efficient method implements (LoRA now, CFLoRA next).

An adapter attaches trainable modules to a (possibly ZeRO-3-partitioned) backbone, exports
only its own weights in a self-describing folder, and reloads them onto a fresh backbone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch


class Adapter(ABC):
    """One parameter-efficient fine-tuning method."""

    kind: str

    @abstractmethod
    def attach(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return ``model`` with adapter modules added; only adapter parameters require grad."""

    @abstractmethod
    def export(self, model: torch.nn.Module, out_dir: Path, gathered, is_rank0: bool) -> Path | None:
        """Write the adapter weights (rank 0) after gathering them on every rank.

        ``gathered(params)`` is a context manager (``DeepSpeedStrategy.gathered``) that makes
        partitioned parameters whole; every rank must enter it (it is a collective).
        """

    @abstractmethod
    def load(self, model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
        """Attach the exported adapter in ``adapter_dir`` to a fresh backbone."""


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
