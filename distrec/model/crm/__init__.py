"""Conventional recommenders (CRMs) used by ReLLaX: DIN (its ID embeddings feed SPA, its
final-MLP hidden output feeds CFLoRA)."""

from distrec.model.crm.din import DIN, DinConfig
from distrec.model.crm.train_din import history_matrix, load_din, save_din, train_din

__all__ = ["DIN", "DinConfig", "history_matrix", "load_din", "save_din", "train_din"]
