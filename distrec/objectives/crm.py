"""What the training loop asks of the DIN CRM: binary cross-entropy of the click label.

Loss: ``Σ BCE(logit, label) / N_global`` per micro-batch, ``N_global`` the step's samples over
every micro-batch and rank, so the step's gradient is that of the mean BCE over the global
batch, as one process computing ``BCEWithLogitsLoss()`` on that batch (DIN, Zhou et al. 2018,
§4.4: the negative log-likelihood of the click label). Prediction: ``sigmoid(logit)``, scored
and selected as the LLM's CTR task is (AUC, higher is better).
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from distrec.data.batching import right_pad
from distrec.objectives.tasks import CTR_COLUMNS, CtrTask, mean_sample_loss, sample_counts


class DinTask:
    """Batches are the rows of :mod:`distrec.train.id_rows`: ``history_ids`` (ragged, at most
    ``hist_len``), ``item_id``, ``label``, ``user_id``, ``sample_id``."""

    selection = ("auc", True)
    eval_columns = CTR_COLUMNS

    def __init__(self, hist_len: int, device: torch.device) -> None:
        self.hist_len, self.device = hist_len, device

    @staticmethod
    def context(batch: dict):
        return contextlib.nullcontext()

    def _logits(self, engine, batch: dict) -> torch.Tensor:
        ids, mask = right_pad(batch["history_ids"], self.hist_len)
        target = torch.as_tensor(np.asarray(batch["item_id"], dtype=np.int64))
        logit, _ = engine(ids.to(self.device), mask.to(self.device), target.to(self.device))
        return logit.float()

    normalisers = staticmethod(sample_counts)
    step_loss = staticmethod(mean_sample_loss)
    metrics = staticmethod(CtrTask.metrics)

    def micro_loss(self, engine, mb: dict, norms: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """``(Σ_micro BCE / N_global, {"loss_sum": Σ_micro BCE})``."""
        labels = torch.as_tensor(np.asarray(mb["label"], dtype=np.float32), device=self.device)
        loss_sum = F.binary_cross_entropy_with_logits(self._logits(engine, mb), labels, reduction="sum")
        return loss_sum / max(norms["samples"], 1.0), {"loss_sum": float(loss_sum.detach())}

    @torch.no_grad()
    def eval_rows(self, engine, batch: dict, n_real: int) -> list[tuple]:
        probs = torch.sigmoid(self._logits(engine, batch)).cpu().numpy()
        return [(int(batch["sample_id"][i]), int(batch["user_id"][i]), int(batch["label"][i]), float(probs[i]))
                for i in range(n_real)]
