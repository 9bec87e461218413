"""DIN's architecture and training settings (the ``crm`` section extends them; :mod:`distrec.model.crm` uses them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DinConfig:
    """DIN architecture and training (the job config's ``crm`` section extends it with ``path``)."""

    embed_dim: int = 32
    hist_len: int = 30  # most recent history items the CRM sees (ReLLa: 30 ML, 60 BookCrossing)
    attn_hidden: int = 64
    hidden_size: int = 256  # final-MLP width = instance_repr dimension (CFLoRA's d_h)
    mlp_layers: int = 3
    dropout: float = 0.1
    history: Literal["recent", "retrieved"] = "recent"  # retrieved: use a SUBR folder's history_indices ("SIM"-style CRM)
    epochs: int = 5
    batch_size: int = 256  # global: split over ray.num_workers ranks
    eval_batch_size: int = 4096
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 2  # epochs without a better valid AUC before stopping
    seed: int = 42

    def __post_init__(self) -> None:
        for name in ("embed_dim", "hist_len", "attn_hidden", "hidden_size", "mlp_layers", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"din.{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"din.dropout must be in [0, 1), got {self.dropout}")
        if self.history not in ("recent", "retrieved"):
            raise ValueError(f"din.history must be 'recent' or 'retrieved', got {self.history!r}")
