"""The EIMF model and one batch's loss: IBIM backbone + (optional) ESIM auxiliary heads.

:func:`step` is one forward + loss on one batch and does no optimisation; the training loop
(:mod:`distrec.train.loop`, through :class:`distrec.objectives.eimf.EimfTask`) calls it on each
rank's micro-batch (all parameter use happens inside :class:`EimfModel`'s ``forward``).

Exactness of the λ = 0 case: ESIM heads are initialised under a forked RNG (seed + 1), the
negatives come from a private generator, and an auxiliary term with λ = 0 is never computed,
so a run with labels and λ_pred = λ_align = 0 updates the backbone bit for bit like a run
without labels.

Serving uses :attr:`EimfModel.backbone` only (``EimfModel.serving_model()``): no labels
table, no heads, no LLM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from distrec.errors import DataError
from distrec.model.interests.backbones import (
    ItemIndex,
    MultiInterestBackbone,
    build_backbone,
    pad_histories,
)
from distrec.config.eimf import EimfConfig
from distrec.model.interests.losses import (
    NegativeSampler,
    auxiliary_losses,
    full_softmax_loss,
    sampled_softmax_loss,
)


def _head(n_in: int, n_out: int, kind: str) -> nn.Module:
    if kind == "linear":
        return nn.Linear(n_in, n_out)
    if kind == "mlp":
        hidden = max(n_in, n_out)
        return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))
    raise ValueError(f"esim.head must be 'linear' or 'mlp', got {kind!r}")


class EsimHeads(nn.Module):
    """``pred``: behavioural interest (d) -> semantic space (d_s); ``align``: semantic (d_s) -> d."""

    def __init__(self, dim: int, semantic_dim: int, kind: str = "linear"):
        super().__init__()
        self.pred = _head(dim, semantic_dim, kind)
        self.align = _head(semantic_dim, dim, kind)


class EimfModel(nn.Module):
    """IBIM backbone plus optional ESIM heads (training only)."""

    def __init__(self, backbone: MultiInterestBackbone, heads: EsimHeads | None = None):
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    def forward(
        self,
        hist: torch.Tensor,
        mask: torch.Tensor,
        target: torch.Tensor | None = None,
        negatives: torch.Tensor | None = None,
        sem: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Everything a loss needs, computed inside one forward (safe under data-parallel wrappers).

        Returns ``interests`` [B, K, d]; with ``target`` also ``target_emb``, ``readout``
        [B, d], ``readout_idx`` [B] and ``cand_emb`` (the negatives' embeddings, or all N items
        when ``negatives`` is None); with ``sem`` [B, M, d_s] (and heads) ``pred`` [B, K, d_s]
        and ``sem_proj`` [B, M, d].
        """
        bb = self.backbone
        interests = bb(hist, mask)
        out = {"interests": interests}
        if target is not None:
            t = bb.item_emb(target)
            readout, idx = bb.readout(interests, t)
            out.update(target_emb=t, readout=readout, readout_idx=idx)
            out["cand_emb"] = bb.item_vectors() if negatives is None else bb.item_emb(negatives)
        if sem is not None and self.heads is not None:
            out["pred"] = self.heads.pred(interests)
            out["sem_proj"] = self.heads.align(sem.to(interests.dtype))
        return out

    def serving_model(self) -> MultiInterestBackbone:
        """What inference needs: the backbone alone."""
        return self.backbone


@dataclass
class EncodedSamples:
    """Generative samples as arrays: item rows (0 = padding), oldest first."""

    user_id: np.ndarray  # [S] int64
    hist: np.ndarray  # [S, L] int64 rows
    mask: np.ndarray  # [S, L] bool
    target: np.ndarray  # [S] int64 rows (1..N)

    def __len__(self) -> int:
        return int(self.user_id.size)


def encode_samples(samples: pa.Table, index: ItemIndex, max_len: int) -> EncodedSamples:
    """Encode a generative samples table (``user_id, item_id, history_item_ids``)."""
    for col in ("user_id", "item_id", "history_item_ids"):
        if col not in samples.column_names:
            raise DataError(f"samples table: missing column '{col}'; found {samples.column_names}")
    hist, mask = pad_histories(samples.column("history_item_ids").to_pylist(), index, max_len)
    return EncodedSamples(
        user_id=samples.column("user_id").to_numpy().astype(np.int64),
        hist=hist,
        mask=mask,
        target=index.rows(samples.column("item_id").to_numpy(), where="samples item_id"),
    )


class SemanticBank:
    """Per-user LLM interest vectors from a labels table (``user_id``, ``interest_vectors``).

    Vectors are L2-normalised [I]; users are padded to the largest M with a mask.
    Users with no vectors (kept-but-dropped rows) count as non-typical.
    """

    def __init__(self, labels: pa.Table):
        for col in ("user_id", "interest_vectors"):
            if col not in labels.column_names:
                raise DataError(f"labels table: missing column '{col}'; found {labels.column_names}")
        uids = labels.column("user_id").to_numpy().astype(np.int64)
        vecs = labels.column("interest_vectors").to_pylist()
        order = np.argsort(uids, kind="stable")
        if np.any(np.diff(uids[order]) == 0):
            raise DataError("labels table: duplicate user_id")
        dims = {len(v) for user in vecs for v in (user or [])}
        if len(dims) > 1:
            raise DataError(f"labels table: interest vectors of different sizes {sorted(dims)}")
        self.dim = dims.pop() if dims else 1
        m = max([len(v or []) for v in vecs] + [1])
        self.user_ids = uids[order]
        self.vectors = np.zeros((len(uids), m, self.dim), dtype=np.float32)
        self.mask = np.zeros((len(uids), m), dtype=bool)
        for row, i in enumerate(order):
            user = vecs[i] or []
            if user:
                v = np.asarray(user, dtype=np.float32)
                v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                self.vectors[row, : len(user)] = v
                self.mask[row, : len(user)] = True

    def lookup(self, user_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(sem [B, M, d_s], sem_mask [B, M])``; unknown users get an all-False mask."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.user_ids, user_ids), 0, max(len(self.user_ids) - 1, 0))
        found = (self.user_ids[pos] == user_ids) if len(self.user_ids) else np.zeros(user_ids.shape, bool)
        sem = self.vectors[pos] * found[:, None, None]
        mask = self.mask[pos] & found[:, None]
        return sem.astype(np.float32), mask

    def typical(self, user_ids: np.ndarray) -> np.ndarray:
        return self.lookup(user_ids)[1].any(axis=1)


def make_batch(data: EncodedSamples, idx: np.ndarray, device: torch.device) -> dict[str, torch.Tensor]:
    return {
        "user_id": torch.from_numpy(data.user_id[idx]).to(device),
        "hist": torch.from_numpy(data.hist[idx]).to(device),
        "mask": torch.from_numpy(data.mask[idx]).to(device),
        "target": torch.from_numpy(data.target[idx]).to(device),
    }


def make_labels(bank: SemanticBank | None, user_ids: np.ndarray, device: torch.device) -> dict[str, torch.Tensor] | None:
    if bank is None:
        return None
    sem, mask = bank.lookup(user_ids)
    return {"sem": torch.from_numpy(sem).to(device), "sem_mask": torch.from_numpy(mask).to(device)}


def step(
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor] | None,
    *,
    cfg: EimfConfig,
    sampler: NegativeSampler | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch: ``(loss, parts)``; no backward, no optimiser step.

    ``batch``: ``hist`` [B, L], ``mask`` [B, L], ``target`` [B] (item rows). ``labels``: None or
    ``sem`` [B, M, d_s] and ``sem_mask`` [B, M] (all False for non-typical users). ``sampler``:
    None = full softmax. ``model`` may be an :class:`EimfModel` or a DeepSpeed engine around one.
    """
    esim = cfg.esim
    use_aux = labels is not None and (esim.lambda_pred > 0 or esim.lambda_align > 0)
    negatives = None
    if sampler is not None:
        negatives = sampler.sample().to(batch["target"].device)
    out = model(batch["hist"], batch["mask"], batch["target"], negatives, labels["sem"] if use_aux else None)
    if negatives is None:
        l_rec = full_softmax_loss(out["readout"], out["cand_emb"], batch["target"])
    else:
        logq = cfg.loss.logq_correction
        l_rec = sampled_softmax_loss(
            out["readout"],
            out["target_emb"],
            out["cand_emb"],
            batch["target"],
            negatives,
            sampler.log_expected_count(batch["target"]) if logq else None,
            sampler.log_expected_count(negatives) if logq else None,
            cfg.loss.remove_accidental_hits,
        )
    parts = {"loss_rec": float(l_rec.detach()), "loss_pred": 0.0, "loss_align": 0.0, "n_pairs": 0.0, "n_typical": 0.0}
    loss = l_rec
    if use_aux:
        if "pred" not in out:
            raise ValueError("labels were given with λ > 0 but the model has no ESIM heads")
        l_pred, l_align, pairs = auxiliary_losses(
            out["interests"], out["pred"], out["sem_proj"], labels["sem"], labels["sem_mask"], esim
        )
        if esim.lambda_pred > 0:
            loss = loss + esim.lambda_pred * l_pred
        if esim.lambda_align > 0:
            loss = loss + esim.lambda_align * l_align
        parts.update(
            loss_pred=float(l_pred.detach()),
            loss_align=float(l_align.detach()),
            n_pairs=float(len(pairs)),
            n_typical=float(labels["sem_mask"].any(dim=1).sum()),
        )
    parts["loss"] = float(loss.detach())
    return loss, parts


def build_model(num_items: int, cfg: EimfConfig, semantic_dim: int | None = None) -> EimfModel:
    """Backbone under the global RNG; heads (when ``semantic_dim``) under a forked RNG (seed + 1)."""
    backbone = build_backbone(num_items, cfg.backbone)
    heads = None
    if semantic_dim is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.train.seed + 1)
            heads = EsimHeads(cfg.backbone.dim, semantic_dim, cfg.esim.head)
    return EimfModel(backbone, heads)


def build_sampler(cfg: EimfConfig, num_items: int, target_rows: np.ndarray) -> NegativeSampler | None:
    if cfg.loss.sampler == "full":
        return None
    counts = None
    if cfg.loss.sampler == "log_uniform" and cfg.loss.popularity_rank:
        counts = np.bincount(target_rows - 1, minlength=num_items)
    return NegativeSampler(num_items, cfg.loss.num_negatives, cfg.loss.sampler, counts=counts, seed=cfg.train.seed)
