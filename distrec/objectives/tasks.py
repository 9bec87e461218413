"""What the training loop trains and evaluates, per task: CTR (yes/no) or generative (SFT/CFT).

The loop is task-agnostic. Per optimiser step it asks the task for this rank's loss
normalisers (:meth:`normalisers`), all-reduces them, and calls :meth:`micro_loss` for each
micro-batch with the global values, so accumulation and data parallelism equal one larger
batch. For evaluation it asks for per-row predictions (:meth:`eval_rows`, tuples laid out as
:attr:`eval_columns`, which the loop packs into compact typed columns batch by batch) and turns
the gathered columns, sorted by sample id, into metrics (:meth:`metrics`); :attr:`selection`
names the validation metric that picks the best state and whether higher is better.

Global normalisation: a step's gradient must be ``∇ Σ_all ℓ / N_global``, the sum and the
count running over every micro-batch of every rank (OpenRLHF, torchtune); averaging per
micro-batch would weight short batches more, and accumulation k would not equal a k-times
larger batch. ``micro_loss`` returns ``Σ_micro ℓ / N_global``; the loop multiplies it by
``grad_accum · world`` because DeepSpeed divides each backward by ``grad_accum`` and averages
gradients over ranks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distrec.data.batching import left_pad


@dataclass
class Batchify:
    """Turns numpy object columns of token ids into left-padded tensors on a device."""

    pad_id: int
    device: torch.device

    def ids(self, sequences) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = left_pad(sequences, self.pad_id)
        return ids.to(self.device), mask.to(self.device)

    def labels(self, sequences, width: int) -> torch.Tensor:
        """Left-pad label rows with −100 to ``width`` columns."""
        out = torch.full((len(sequences), width), -100, dtype=torch.long)
        for i, s in enumerate(sequences):
            out[i, width - len(s):] = torch.as_tensor(np.asarray(s), dtype=torch.long)
        return out.to(self.device)


CTR_COLUMNS = (("sample_id", "<i8"), ("user_id", "<i8"), ("label", "i1"), ("p_yes", "<f4"))


def sample_counts(micro_batches: list[dict]) -> dict[str, float]:
    """``{"samples": rows in the step's micro-batches}``: the normaliser of a per-sample mean loss
    (CTR's one answer token per sample, the DIN's BCE, EIMF's losses)."""
    return {"samples": float(sum(len(mb["sample_id"]) for mb in micro_batches))}


def mean_sample_loss(stats: dict[str, float], norms: dict[str, float]) -> dict[str, float]:
    """The step's logged loss: the summed ``loss_sum`` over the step's global sample count."""
    return {"train/loss": stats["loss_sum"] / max(norms["samples"], 1.0)}


class _Task:
    """``conditioning``: per-batch CRM inputs (``model.rellax.BatchConditioning``) or None."""

    conditioning = None

    def context(self, batch: dict):
        """Hold per-instance state (CFLoRA's h_u) around a micro-batch's forward *and* backward."""
        return self.conditioning.context(batch) if self.conditioning is not None else contextlib.nullcontext()

    def _kwargs(self, batch: dict) -> dict:
        return self.conditioning.kwargs(batch) if self.conditioning is not None else {}


class CtrTask(_Task):
    """P(yes) at the answer position; LM loss of the answer token (see ``objectives.ctr``).

    ``share_prefix``: the micro-batch's common prompt prefix runs once (``objectives.shared_prefix``).
    """

    selection = ("auc", True)
    eval_columns = CTR_COLUMNS

    def __init__(self, yes_id: int, no_id: int, batchify: Batchify, conditioning=None,
                 share_prefix: bool = False) -> None:
        self.yes_id, self.no_id, self.b = yes_id, no_id, batchify
        self.conditioning, self.share_prefix = conditioning, share_prefix

    normalisers = staticmethod(sample_counts)
    step_loss = staticmethod(mean_sample_loss)

    def _logits(self, engine, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """``(logits [B, V], answer ids [B], {"forward_tokens": n}`` when the prefix was shared)."""
        from distrec.objectives.ctr import answer_logits, shared_answer_logits

        ids, mask = self.b.ids([seq[:-1] for seq in batch["input_ids"]])
        answers = torch.as_tensor([int(seq[-1]) for seq in batch["input_ids"]], device=ids.device)
        shared = shared_answer_logits(engine, ids, mask) if self.share_prefix and self.conditioning is None else None
        if shared is not None:
            return shared[0], answers, {"forward_tokens": shared[1] + len(answers)}
        return answer_logits(engine, ids, mask, **self._kwargs(batch)), answers, {}

    def micro_loss(self, engine, mb: dict, norms: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        """This micro-batch's share of the global mean answer loss (and its summed loss)."""
        from distrec.objectives.ctr import ctr_loss_sum

        logits, answers, through = self._logits(engine, mb)
        loss_sum = ctr_loss_sum(logits, answers)
        return loss_sum / max(norms["samples"], 1.0), {"loss_sum": float(loss_sum.detach()), **through}

    @torch.no_grad()
    def eval_rows(self, engine, batch: dict, n_real: int) -> list[tuple]:
        from distrec.objectives.ctr import p_yes

        with self.context(batch):
            logits, _, _ = self._logits(engine, batch)
        probs = p_yes(logits, self.yes_id, self.no_id).cpu().numpy()
        return [(int(batch["sample_id"][i]), int(batch["user_id"][i]), int(batch["label"][i]), float(probs[i]))
                for i in range(n_real)]

    @staticmethod
    def metrics(columns: dict[str, np.ndarray], split: str | None = None, step: int | None = None,
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """AUC, UAUC, log loss from ``columns`` (:data:`CTR_COLUMNS`, sorted by sample id); the
        columns come back as the predictions to write. ``split``/``step`` name the evaluation
        point in the error a non-finite P(yes) raises."""
        from distrec.metrics.ctr_metrics import ctr_metrics
        from distrec.metrics.finite import evaluation_point

        metrics = ctr_metrics(columns["label"], columns["p_yes"], columns["user_id"],
                              sample_ids=columns["sample_id"], where=evaluation_point(split, step))
        return metrics, columns


class GenerativeTask(_Task):
    """Next-item title generation: SFT, or CFT when ``cft.lam > 0`` (``objectives.cft``).

    CFT's forward: with ``share_prefix``, both branches' common prefixes run once
    (:func:`~distrec.objectives.cft.shared_cft_logits`); else with ``share_cf_prompt``
    (``JobConfig.shares_cf_prompt``, the default) only the counterfactual prompt does; either needs
    the model's trunk attention (``JobConfig.trunk_attention``). Otherwise, and where nothing is
    shared, :func:`~distrec.objectives.cft.cft_logits`.

    Validation during training uses the evaluation loss ``L_n`` (lower is better): beam
    search over a catalogue is far too slow to run every few steps on CPU. The final
    grounded HR/NDCG evaluation lives in ``eval.generation``.
    """

    selection = ("loss", False)
    eval_columns = (("sample_id", "<i8"), ("ln_sum", "<f8"), ("weight_sum", "<f8"), ("ln_plain_sum", "<f8"),
                    ("tokens", "<f8"))

    def __init__(self, cft, batchify: Batchify, share_prefix: bool = False, share_cf_prompt: bool = False) -> None:
        self.cft, self.b, self.share_prefix, self.share_cf_prompt = cft, batchify, share_prefix, share_cf_prompt

    def _label_rows(self, mb: dict, width: int) -> torch.Tensor:
        return self.b.labels(mb["labels"], width)

    def normalisers(self, micro_batches: list[dict]) -> dict[str, float]:
        from distrec.objectives.cft import label_normalisers

        total = {"weight_sum": 0.0, "tokens": 0.0}
        for mb in micro_batches:
            width = max(len(s) for s in mb["labels"])
            norms = label_normalisers(self._label_rows(mb, width), self.cft.beta, self.cft.weight_rule)
            for k in total:
                total[k] += float(norms[k])
        return total

    def _sums(self, engine, mb: dict, with_cf: bool) -> dict[str, torch.Tensor]:
        from distrec.objectives.cft import (cft_logits, cft_loss_sums, packed_forward_tokens, shared_cft_logits,
                                            token_weights)

        f_ids, f_mask = self.b.ids(mb["input_ids"])
        f_labels = self._label_rows(mb, f_ids.shape[1])
        cf_ids = cf_mask = None
        if with_cf:
            cf_ids, cf_mask = self.b.ids(mb["cf_input_ids"])
        shared = None
        if self.share_prefix or (with_cf and self.share_cf_prompt):
            shared = shared_cft_logits(engine, f_ids, f_mask, f_labels, cf_ids, cf_mask, self.share_prefix)
        if shared is not None:
            z_f, z_cf, y, through = shared
        else:
            z_f, z_cf, y = cft_logits(engine, f_ids, f_mask, f_labels, cf_ids, cf_mask, self.b.pad_id,
                                      stacked=self.cft.stacked, cf_grad=self.cft.cf_grad, pack=self.cft.pack)
            through = None
            if with_cf and self.cft.stacked and self.cft.pack:  # the shared prefix runs once
                through = packed_forward_tokens(f_ids, f_mask, cf_ids, cf_mask, f_labels)
        weights = token_weights(y != -100, self.cft.beta, self.cft.weight_rule)
        sums = cft_loss_sums(z_f, z_cf, y, weights, cf_grad=self.cft.cf_grad)
        if through is not None:
            sums["forward_tokens"] = torch.as_tensor(float(through))
        return sums

    def micro_loss(self, engine, mb: dict, norms: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
        from distrec.objectives.cft import combine

        sums = self._sums(engine, mb, with_cf=self.cft.lam > 0)
        loss = combine(sums, self.cft.lam, self.cft.weight_both, normalisers=norms)
        return loss, {k: float(v.detach()) for k, v in sums.items()}

    def step_loss(self, stats: dict[str, float], norms: dict[str, float]) -> dict[str, float]:
        w, n = max(norms["weight_sum"], 1e-12), max(norms["tokens"], 1.0)
        ln = stats["ln_sum"] / w if self.cft.weight_both else stats["ln_plain_sum"] / n
        lc = stats["lc_sum"] / w
        return {"train/loss": ln + self.cft.lam * lc, "train/loss_n": ln, "train/loss_c": lc}

    @torch.no_grad()
    def eval_rows(self, engine, batch: dict, n_real: int) -> list[tuple]:
        """One forward over the (padded) batch; the padding rows' labels are masked out.

        Returns one row of summed loss terms keyed by the batch's first sample id.
        """
        batch = dict(batch)
        batch["labels"] = [s if i < n_real else np.full(len(s), -100) for i, s in enumerate(batch["labels"])]
        if n_real == 0:
            batch["labels"][0] = np.asarray(batch["labels"][0]).copy()
            batch["labels"][0][-1] = batch["input_ids"][0][-1]  # keep one label so the forward runs
        sums = self._sums(engine, batch, with_cf=False)
        if n_real == 0:
            return []
        return [(int(batch["sample_id"][0]), float(sums["ln_sum"]), float(sums["weight_sum"]),
                 float(sums["ln_plain_sum"]), float(sums["tokens"]))]

    def metrics(self, columns: dict[str, np.ndarray], split: str | None = None, step: int | None = None,
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """The split's loss from the batches' summed terms (:attr:`eval_columns`). A non-finite
        batch loss raises, naming ``split``/``step`` and the batch's first sample."""
        from distrec.metrics.finite import evaluation_point, require_finite

        require_finite(np.stack([columns["ln_sum"], columns["ln_plain_sum"]], axis=1), columns["sample_id"],
                       where=evaluation_point(split, step), what="batch evaluation loss",
                       id_name="batch starting at sample id")
        if self.cft.weight_both:
            loss = columns["ln_sum"].sum() / max(columns["weight_sum"].sum(), 1e-12)
        else:
            loss = columns["ln_plain_sum"].sum() / max(columns["tokens"].sum(), 1.0)
        return {"loss": float(loss), "tokens": int(columns["tokens"].sum())}, {}


def pack_rows(rows: list[tuple], layout: tuple[tuple[str, str], ...]) -> np.ndarray:
    """A batch's ``eval_rows`` as one structured array of ``layout`` (``[(name, numpy dtype)]``):
    about 21 bytes a CTR row instead of a Python tuple's ~200."""
    return np.array(rows, dtype=np.dtype(list(layout)))
