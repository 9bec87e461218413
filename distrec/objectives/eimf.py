"""What the training loop asks of EIMF: IBIM's next-item loss (+ ESIM's auxiliary losses).

Per micro-batch the loss is :func:`distrec.model.interests.eimf.step`'s batch mean (sampled
softmax on the argmax interest, ComiRec; plus λ_pred·L_pred + λ_align·L_align on typical users,
methods.md §2.3) weighted by ``rows / N_global``, so with equal micro-batches the step's gradient
is the average of the micro-batches' mean losses, as DDP over the ranks' slices gives. Each
micro-batch draws its shared negatives from the task's seeded sampler (identical on every
rank; its generator is checkpointed, :attr:`generators`). The in-batch terms (InfoNCE,
matching) see one micro-batch, as they saw one rank's slice before.

Validation: each row's 0-based rank of its target among the whole catalogue by the
max-over-interests score (strictly higher scores count; with ``eval.exclude_history`` the
history's items are left out, and a target among them is a miss), turned into HR@K and NDCG@K;
the best state is the one with the highest NDCG at the largest K.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from distrec.config.eimf import EimfConfig
from distrec.model.interests.backbones import ItemIndex, pad_histories
from distrec.model.interests.eimf import SemanticBank, make_labels, step
from distrec.objectives.tasks import sample_counts

PARTS = ("loss", "loss_rec", "loss_pred", "loss_align")
COUNTS = ("n_pairs", "n_typical")


class EimfTask:
    """Batches are the rows of :mod:`distrec.train.id_rows` on generative samples:
    ``history_ids`` (the last ``backbone.max_len`` items), ``item_id``, ``user_id``, ``sample_id``."""

    def __init__(self, cfg: EimfConfig, index: ItemIndex, sampler, bank: SemanticBank | None,
                 device: torch.device) -> None:
        self.cfg, self.index, self.sampler, self.bank, self.device = cfg, index, sampler, bank, device
        self.selection = (f"ndcg@{max(cfg.eval.ks)}", True)

    eval_columns = (("sample_id", "<i8"), ("user_id", "<i8"), ("rank", "<i8"))

    @property
    def generators(self) -> dict[str, torch.Generator]:
        """Random state the checkpoint keeps (the negatives' stream)."""
        return {"negatives": self.sampler.generator} if self.sampler is not None else {}

    @staticmethod
    def context(batch: dict):
        return contextlib.nullcontext()

    def _batch(self, mb: dict) -> dict[str, torch.Tensor]:
        hist, mask = pad_histories(mb["history_ids"], self.index, self.cfg.backbone.max_len)
        target = self.index.rows(np.asarray(mb["item_id"], dtype=np.int64), where="item_id")
        return {"hist": torch.from_numpy(hist).to(self.device), "mask": torch.from_numpy(mask).to(self.device),
                "target": torch.from_numpy(target).to(self.device)}

    normalisers = staticmethod(sample_counts)

    def micro_loss(self, engine, mb: dict, norms: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """``(mean loss · rows / N_global, {part: part · rows} ∪ counts)``."""
        rows = len(mb["sample_id"])
        labels = make_labels(self.bank, np.asarray(mb["user_id"], dtype=np.int64), self.device)
        loss, parts = step(engine, self._batch(mb), labels, cfg=self.cfg, sampler=self.sampler)
        stats = {k: parts[k] * rows for k in PARTS}
        stats.update({k: parts[k] for k in COUNTS})
        return loss * (rows / max(norms["samples"], 1.0)), stats

    @staticmethod
    def step_loss(stats: dict[str, float], norms: dict[str, float]) -> dict[str, float]:
        n = max(norms["samples"], 1.0)
        return {**{f"train/{k}": stats[k] / n for k in PARTS}, **{f"train/{k}": stats[k] for k in COUNTS}}

    @torch.no_grad()
    def eval_rows(self, engine, batch: dict, n_real: int) -> list[tuple]:
        b = self._batch(batch)
        module = engine.module if hasattr(engine, "module") else engine
        scores = module.backbone.score_all(b["hist"], b["mask"])  # [B, N]: max over interests
        target = b["target"] - 1
        if self.cfg.eval.exclude_history:
            seen = torch.zeros_like(scores, dtype=torch.bool)
            rows = torch.arange(len(target), device=scores.device)[:, None].expand_as(b["hist"])
            seen[rows[b["mask"]], b["hist"][b["mask"]] - 1] = True
            scores = scores.masked_fill(seen, float("-inf"))
        own = scores.gather(1, target[:, None])
        ranks = (scores > own).sum(dim=1)
        ranks = torch.where(torch.isfinite(own[:, 0]), ranks, torch.full_like(ranks, -1)).cpu().numpy()
        return [(int(batch["sample_id"][i]), int(batch["user_id"][i]), int(ranks[i])) for i in range(n_real)]

    def metrics(self, columns: dict[str, np.ndarray], split: str | None = None, step: int | None = None,
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """HR@K / NDCG@K of the ``rank`` column (:attr:`eval_columns`, sorted by sample id)."""
        from distrec.metrics.ranking_metrics import rank_metrics

        return {"n": int(len(columns["rank"])), **rank_metrics(columns["rank"], self.cfg.eval.ks)}, columns
