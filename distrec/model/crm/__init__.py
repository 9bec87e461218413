"""Conventional recommenders (CRMs) used by ReLLaX: DIN (its ID embeddings feed SPA, its
final-MLP hidden output feeds CFLoRA). Its folder format is ``crm.artefact``; it is trained by
the one training loop (``model.kind: din``, :func:`distrec.train.artefacts.ensure_crm`)."""

from distrec.config.din import DinConfig
from distrec.model.crm.din import DIN

__all__ = ["DIN", "DinConfig"]
