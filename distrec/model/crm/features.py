"""What the frozen CRM (DIN) gives the LLM per batch: SPA's item embeddings and CFLoRA's h_u.

The CRM is small and frozen, so every rank holds a whole copy outside DeepSpeed and runs it
under ``no_grad`` on the batch's own columns (``history_item_ids``, ``item_id``,
``shown_item_ids``; ``history_indices`` when the CRM reads retrieved histories). Nothing is
precomputed, so the same code serves training, evaluation and inference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from distrec.model.crm.artefact import load_din
from distrec.model.crm.history import history_matrix


def _list_column(values) -> pa.Array:
    return pa.array([np.asarray(v, dtype=np.int64) for v in values], type=pa.list_(pa.int64()))


class CrmFeatures:
    """A frozen DIN on ``device``; batches are dicts of numpy columns as the data stream yields."""

    def __init__(self, din_dir: str | Path, device: torch.device | str = "cpu") -> None:
        self.din = load_din(din_dir, device)
        for p in self.din.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        self.config = self.din.config

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @torch.no_grad()
    def instance(self, batch: dict) -> torch.Tensor:
        """``h_u [B, hidden_size]``: DIN's final hidden layer for (history, target) of each row."""
        columns = {"history_item_ids": _list_column(batch["history_item_ids"])}
        if self.config.history == "retrieved":
            columns["history_indices"] = _list_column(batch["history_indices"])
        ids, mask = history_matrix(pa.table(columns), self.config.hist_len, self.config.history)
        target = torch.as_tensor(np.asarray(batch["item_id"], dtype=np.int64), device=self.device)
        _, h = self.din(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device), target)
        return h

    @torch.no_grad()
    def soft_prompt_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """SPA inputs: ``hist [B, N, embed_dim]`` (shown items, prompt order, zero-padded),
        ``counts [B]``, ``target [B, embed_dim]``."""
        shown = [np.asarray(v, dtype=np.int64) for v in batch["shown_item_ids"]]
        counts = torch.tensor([len(v) for v in shown], dtype=torch.long, device=self.device)
        width = max(1, int(counts.max())) if len(shown) else 1
        ids = torch.zeros((len(shown), width), dtype=torch.long, device=self.device)
        for i, v in enumerate(shown):
            ids[i, : len(v)] = torch.from_numpy(v)
        hist = self.din.item_embeddings(ids)
        hist = hist * (torch.arange(width, device=self.device)[None, :] < counts[:, None]).unsqueeze(-1)
        target = self.din.item_embeddings(torch.as_tensor(np.asarray(batch["item_id"], dtype=np.int64), device=self.device))
        return {"hist": hist, "counts": counts, "target": target}
