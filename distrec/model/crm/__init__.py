"""Conventional recommenders (CRMs) used by ReLLaX: DIN (its ID embeddings feed SPA, its
final-MLP hidden output feeds CFLoRA). Training and loading live in ``crm.train_din``, kept
out of this package's import so the config (which needs ``DinConfig``) stays light."""

from distrec.config.din import DinConfig
from distrec.model.crm.din import DIN

__all__ = ["DIN", "DinConfig"]
