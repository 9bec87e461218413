"""DIN (Deep Interest Network), the conventional recommender (CRM) that feeds ReLLaX's SPA and CFLoRA.

methods.md §3.6: the CRM is pretrained, then frozen; SPA takes its **item-ID embeddings**
(:meth:`DIN.item_embeddings`), CFLoRA takes its **instance representation** (the final-MLP
hidden output, dimension ``hidden_size``; 256 for ML-1M in RecLoRA's config).

Architecture (ids only, no side features):

- item-ID embedding ``E`` (``embed_dim``, default 32). Row 0 is padding and also stands for
  ids outside the catalogue the model was built for (a zero vector, never trained);
- target attention over the history (the last ``hist_len`` items, default 30): an MLP on
  ``[h, t, h - t, h * t]`` gives one weight per position; as in the DIN paper the weights are
  not softmax-normalised. Padding positions get weight 0 and a zeroed ``h``, so whatever id
  sits at a masked position cannot change the output. An empty history gives a zero interest;
- a final MLP (``mlp_layers`` × ``hidden_size``, ReLU, dropout) on
  ``[interest, t, interest * t]``; its last hidden output is ``instance_repr``; a linear head
  gives the logit.

``forward(history_ids [B, L], history_mask [B, L], target_ids [B]) -> (logit [B],
instance_repr [B, hidden_size])`` takes raw dataset item ids; the model maps them to rows
through its ``catalog_ids`` buffer (saved with the weights).
"""

from __future__ import annotations


import numpy as np
import torch
from torch import nn

from distrec.config.din import DinConfig


class DIN(nn.Module):
    """Deep Interest Network over item ids (see the module docstring)."""

    def __init__(self, catalog_ids: np.ndarray | torch.Tensor, cfg: DinConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or DinConfig()
        self.config = cfg
        ids = torch.as_tensor(np.asarray(catalog_ids, dtype=np.int64)).sort().values
        if ids.numel() == 0:
            raise ValueError("DIN: empty catalogue")
        if (ids[1:] == ids[:-1]).any():
            raise ValueError("DIN: catalog_ids has duplicates")
        self.register_buffer("catalog_ids", ids)
        e = cfg.embed_dim
        self.embedding = nn.Embedding(ids.numel() + 1, e, padding_idx=0)
        self.attention = nn.Sequential(nn.Linear(4 * e, cfg.attn_hidden), nn.ReLU(), nn.Linear(cfg.attn_hidden, 1))
        layers: list[nn.Module] = []
        width = 3 * e
        for _ in range(cfg.mlp_layers):
            layers += [nn.Linear(width, cfg.hidden_size), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = cfg.hidden_size
        self.mlp = nn.Sequential(*layers)
        self.head = nn.Linear(cfg.hidden_size, 1)
        nn.init.normal_(self.embedding.weight, std=0.05)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    @property
    def n_items(self) -> int:
        return int(self.catalog_ids.numel())

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding row of each raw item id (0 for ids outside the catalogue)."""
        ids = torch.as_tensor(ids, dtype=torch.long, device=self.catalog_ids.device)
        pos = torch.searchsorted(self.catalog_ids, ids)
        clamped = pos.clamp(max=self.n_items - 1)
        found = (pos < self.n_items) & (self.catalog_ids[clamped] == ids)
        return torch.where(found, clamped + 1, torch.zeros_like(clamped))

    def item_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """The CRM's ID embedding of raw item ids, ``[..., embed_dim]`` (SPA's input)."""
        return self.embedding(self.rows(ids))

    def forward(
        self, history_ids: torch.Tensor, history_mask: torch.Tensor, target_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.as_tensor(history_mask, device=self.catalog_ids.device).to(self.embedding.weight.dtype)
        rows = self.rows(history_ids) * (mask > 0)
        h = self.embedding(rows) * mask.unsqueeze(-1)  # [B, L, E]
        t = self.item_embeddings(target_ids)  # [B, E]
        tt = t.unsqueeze(1).expand_as(h)
        w = self.attention(torch.cat([h, tt, h - tt, h * tt], dim=-1)).squeeze(-1) * mask  # [B, L]
        interest = torch.einsum("bl,ble->be", w, h)
        repr_ = self.mlp(torch.cat([interest, t, interest * t], dim=-1))
        return self.head(repr_).squeeze(-1), repr_
