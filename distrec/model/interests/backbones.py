"""IBIM backbones: ComiRec-SA and ComiRec-DR, plus the item-id <-> row mapping they share.

Both map a padded history ``hist`` [B, L] (item rows, 0 = padding, oldest first) and its
``mask`` [B, L] to K interest vectors [B, K, d]. Item row ``r`` (1..N) is item
``ItemIndex.ids[r - 1]``; row 0 is the padding row. The item table is shared by the input
lookup and the output (softmax / retrieval) side, as in ComiRec.

Training reads out one interest per sample: the one with the highest dot product with the
target item's embedding (ComiRec's hard readout). Serving scores an item by the maximum over
interests of interest·item.

Both follow ComiRec's public TF code (``THUDM/ComiRec`` ``src/model.py``) [C]:

- SA: ``A = softmax_L(W2 tanh(W1 (E + P)))`` with padded positions masked, interests
  ``A @ E`` (position embeddings enter the attention only).
- DR: behaviour capsules ``û = bilinear(E)``; routing logits ``b`` [B, K, L]; each iteration
  ``w = softmax_K(b)`` (padding -> 0), ``v = squash(w @ û)``, ``b += û·v`` (on a detached
  ``û``), last iteration without the update. ComiRec-DR uses one map per capsule and zero
  logits; MIND one shared map and random logits. Random logits are drawn once at construction
  (a buffer) so serving is deterministic [I].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from distrec.errors import DataError
from distrec.config.eimf import BackboneConfig

_NEG = -(2.0**32) + 1.0  # ComiRec's padding logit: finite, so an all-padding row stays finite


@dataclass(frozen=True)
class ItemIndex:
    """Sorted item ids; item ``ids[r - 1]`` is embedding row ``r`` (row 0 = padding)."""

    ids: np.ndarray  # int64, sorted, unique

    @classmethod
    def from_items(cls, items: pa.Table | Sequence[int] | np.ndarray) -> ItemIndex:
        raw = items.column("item_id").to_numpy() if isinstance(items, pa.Table) else np.asarray(items)
        ids = np.unique(raw.astype(np.int64))
        return cls(ids=ids)

    @property
    def num_items(self) -> int:
        return int(self.ids.size)

    def rows(self, item_ids: np.ndarray | Sequence[int], where: str = "items") -> np.ndarray:
        """Embedding rows (1..N) of ``item_ids``; raises DataError naming an unknown id."""
        arr = np.asarray(item_ids, dtype=np.int64)
        pos = np.searchsorted(self.ids, arr)
        pos = np.clip(pos, 0, max(self.ids.size - 1, 0))
        ok = self.ids[pos] == arr if self.ids.size else np.zeros(arr.shape, bool)
        if not np.all(ok):
            bad = arr[~ok].reshape(-1)[0]
            raise DataError(f"{where}: item_id {int(bad)} is not in the items table")
        return pos + 1

    def item_ids(self, rows: np.ndarray) -> np.ndarray:
        """Item ids of embedding rows (1..N); row 0 or a negative row maps to -1."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.full(rows.shape, -1, dtype=np.int64)
        ok = rows >= 1
        out[ok] = self.ids[rows[ok] - 1]
        return out


def pad_histories(histories: Sequence[Sequence[int]], index: ItemIndex, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Item-id histories (oldest first) -> rows [S, max_len] (most recent ``max_len`` kept,
    left-aligned, 0-padded at the end) and a bool mask."""
    n = len(histories)
    hist = np.zeros((n, max_len), dtype=np.int64)
    mask = np.zeros((n, max_len), dtype=bool)
    for i, h in enumerate(histories):
        h = list(h)[-max_len:]
        if h:
            hist[i, : len(h)] = index.rows(h, where="history_item_ids")
            mask[i, : len(h)] = True
    return hist, mask


def squash(s: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """Capsule squash ``|s|² / (1 + |s|²) · s / |s|`` (ComiRec's form, eps inside the sqrt)."""
    n2 = (s * s).sum(-1, keepdim=True)
    return n2 / (1.0 + n2) / torch.sqrt(n2 + eps) * s


class MultiInterestBackbone(nn.Module):
    """Shared parts: the item table, readout and serving scores. Subclasses define ``forward``."""

    def __init__(self, num_items: int, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.num_items = num_items
        self.item_emb = nn.Embedding(num_items + 1, cfg.dim, padding_idx=0)
        std = cfg.emb_init_std if cfg.emb_init_std is not None else cfg.dim**-0.5
        nn.init.normal_(self.item_emb.weight, std=std)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def forward(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def embed_history(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.item_emb(hist) * mask.unsqueeze(-1).to(self.item_emb.weight.dtype)

    def item_vectors(self) -> torch.Tensor:
        """[N, d] embeddings of items 1..N (no padding row): what serving indexes."""
        return self.item_emb.weight[1:]

    @staticmethod
    def readout(interests: torch.Tensor, target_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hard readout: for each sample the interest with the highest dot product with the target.

        Returns ``(chosen [B, d], index [B])``; the choice itself carries no gradient (argmax).
        """
        scores = torch.einsum("bkd,bd->bk", interests, target_emb)
        idx = scores.argmax(dim=1)
        chosen = interests.gather(1, idx.view(-1, 1, 1).expand(-1, 1, interests.shape[-1])).squeeze(1)
        return chosen, idx

    def score_all(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Serving scores [B, N]: max over interests of interest·item (items 1..N)."""
        interests = self(hist, mask)
        return torch.einsum("bkd,nd->bkn", interests, self.item_vectors()).amax(dim=1)


class ComiRecSA(MultiInterestBackbone):
    """Self-attentive multi-interest extractor (ComiRec-SA)."""

    def __init__(self, num_items: int, cfg: BackboneConfig):
        super().__init__(num_items, cfg)
        d, k = cfg.dim, cfg.num_interests
        self.pos_emb = nn.Parameter(torch.empty(cfg.max_len, d)) if cfg.sa_add_pos else None
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb, std=d**-0.5)
        self.att_hidden = nn.Linear(d, d * cfg.sa_hidden_mult)
        self.att_out = nn.Linear(d * cfg.sa_hidden_mult, k)

    def attention(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention weights [B, K, L] (rows sum to 1 over the unpadded positions)."""
        e = self.embed_history(hist, mask)
        h = e if self.pos_emb is None else e + self.pos_emb[: e.shape[1]].unsqueeze(0)
        logits = self.att_out(torch.tanh(self.att_hidden(h))).transpose(1, 2)  # [B, K, L]
        logits = logits.masked_fill(~mask.unsqueeze(1), _NEG)
        return torch.softmax(logits, dim=-1)

    def forward(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        e = self.embed_history(hist, mask)
        return torch.bmm(self.attention(hist, mask), e)  # [B, K, d]


class ComiRecDR(MultiInterestBackbone):
    """Dynamic-routing (capsule) multi-interest extractor (ComiRec-DR / MIND-style)."""

    def __init__(self, num_items: int, cfg: BackboneConfig):
        super().__init__(num_items, cfg)
        d, k = cfg.dim, cfg.num_interests
        out = d if cfg.dr_bilinear == "shared" else d * k
        self.bilinear = nn.Linear(d, out, bias=False)
        if cfg.dr_init == "fixed_normal":
            self.register_buffer("init_logits", torch.randn(k, cfg.max_len))
        else:
            self.register_buffer("init_logits", torch.zeros(k, cfg.max_len))

    def behaviour_capsules(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """û [B, K, L, d]: each history item mapped into every interest capsule's space."""
        e = self.embed_history(hist, mask)
        b, length, d = e.shape
        k = self.cfg.num_interests
        u = self.bilinear(e)  # [B, L, d] or [B, L, K·d]
        if self.cfg.dr_bilinear == "shared":
            u = u.unsqueeze(2).expand(b, length, k, d)
        else:
            u = u.view(b, length, k, d)
        return u.permute(0, 2, 1, 3)

    def forward(self, hist: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        u = self.behaviour_capsules(hist, mask)  # [B, K, L, d]
        b_sz, k, length, _ = u.shape
        u_iter = u.detach() if self.cfg.dr_stop_grad_routing else u
        logits = self.init_logits[:, :length].unsqueeze(0).expand(b_sz, k, length)
        pad = ~mask.unsqueeze(1)  # [B, 1, L]
        v = None
        for it in range(self.cfg.dr_iters):
            w = torch.softmax(logits, dim=1).masked_fill(pad, 0.0)  # softmax over interests
            last = it == self.cfg.dr_iters - 1
            src = u if last else u_iter
            v = squash(torch.einsum("bkl,bkld->bkd", w, src))
            if not last:
                logits = logits + torch.einsum("bkld,bkd->bkl", u_iter, v)
        return v  # [B, K, d]


def build_backbone(num_items: int, cfg: BackboneConfig) -> MultiInterestBackbone:
    """ComiRec-SA (``kind="sa"``) or ComiRec-DR (``kind="dr"``) over ``num_items`` items."""
    if cfg.kind == "sa":
        return ComiRecSA(num_items, cfg)
    if cfg.kind == "dr":
        return ComiRecDR(num_items, cfg)
    raise ValueError(f"backbone.kind must be 'sa' or 'dr', got {cfg.kind!r}")
