"""Adapters: parameter-efficient methods behind one interface (:class:`base.Adapter`)."""

from __future__ import annotations

from distrec.config import AdapterConfig
from distrec.model.adapters.base import Adapter
from distrec.model.adapters.lora import LoraAdapter


class NoAdapter(Adapter):
    """Full fine-tuning: every backbone parameter trains; export writes nothing."""

    kind = "none"

    def attach(self, model):
        return model

    def export(self, model, out_dir, gathered, is_rank0):
        return None

    def load(self, model, adapter_dir):
        return model


def make_adapter(cfg: AdapterConfig, d_instance: int = 256) -> Adapter:
    """The adapter named by ``adapter.kind``; ``d_instance``: the CRM hidden size (CFLoRA)."""
    if cfg.kind == "lora":
        return LoraAdapter(cfg)
    if cfg.kind == "cflora":
        from distrec.model.adapters.cflora import CFLoraAdapter

        return CFLoraAdapter(cfg, d_instance)
    return NoAdapter()
