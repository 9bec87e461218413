"""EIMF losses: ``L = L_rec + λ_pred·L_pred + λ_align·L_align``.

``L_rec`` [C, ComiRec]: sampled softmax over the item table for the read-out interest.
Negatives are drawn with replacement, shared by the whole batch, from a uniform or a
log-uniform (Zipfian) proposal ``q``. With ``logq_correction`` every logit ``s`` becomes
``s - log(n·q(item))`` (``n·q`` = the item's expected count among the ``n`` draws), for the
positive and for every negative, as TensorFlow's ``sampled_softmax_loss`` does: it makes the
sampled softmax an unbiased-in-the-limit estimate of the full softmax whatever ``q`` is. A
sampled negative equal to the row's target is masked (``remove_accidental_hits``).

``L_pred`` and ``L_align`` [I, methods.md §2.4]: a projection ``pred_head`` maps each
behavioural interest [B, K, d] into the semantic space; each typical user's K behavioural
interests are matched one-to-one to its M LLM interest vectors [B, M, d_s] (Hungarian or
greedy on cosine similarity; the matching itself carries no gradient). ``L_pred`` is the mean
``1 - cos`` (or MSE) over matched pairs. ``L_align`` is InfoNCE between the matched
behavioural interests and the semantic interests projected to d (``align_head``): each
matched pair is a positive, every other matched pair in the batch a negative, temperature τ.
Rows without semantic interests (non-typical users) have no pairs, so they contribute nothing,
and a batch without pairs gives exactly 0 for both terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from distrec.config.eimf import EsimConfig

_MASKED = -1e9  # logit for masked accidental hits: finite, exp() underflows to 0


class NegativeSampler:
    """Shared negatives over item rows 1..N from a uniform or log-uniform proposal.

    ``counts`` (length N, training frequency of rows 1..N) orders items for the log-uniform
    proposal, most frequent first, ties by row (``q(rank r) = log((r+2)/(r+1)) / log(N+1)``);
    without counts the rank is the row order. Draws use a private, seeded ``torch.Generator``.
    """

    def __init__(
        self,
        num_items: int,
        num_negatives: int,
        kind: str = "log_uniform",
        counts: np.ndarray | None = None,
        seed: int = 0,
    ):
        if num_items < 1:
            raise ValueError("NegativeSampler needs at least one item")
        self.num_items = num_items
        self.num_negatives = num_negatives
        self.kind = kind
        if kind == "uniform":
            q = np.full(num_items, 1.0 / num_items)
        elif kind == "log_uniform":
            if counts is not None:
                counts = np.asarray(counts)
                order = np.lexsort((np.arange(num_items), -counts))  # by count desc, then row
                rank = np.empty(num_items, dtype=np.int64)
                rank[order] = np.arange(num_items)
            else:
                rank = np.arange(num_items)
            q = np.log((rank + 2.0) / (rank + 1.0)) / np.log(num_items + 1.0)
        else:
            raise ValueError(f"sampler kind must be 'uniform' or 'log_uniform', got {kind!r}")
        self.q = torch.from_numpy(q)  # float64, q[row - 1]
        self.log_expected = torch.log(self.q * num_negatives)  # log(n · q)
        self.generator = torch.Generator().manual_seed(int(seed))
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def sample(self) -> torch.Tensor:
        """``num_negatives`` item rows in 1..N (int64, CPU), drawn with replacement."""
        if self.kind == "uniform":
            return torch.randint(1, self.num_items + 1, (self.num_negatives,), generator=self.generator)
        return torch.multinomial(self.q, self.num_negatives, replacement=True, generator=self.generator) + 1

    def log_expected_count(self, rows: torch.Tensor) -> torch.Tensor:
        """``log(n · q(row))`` for item rows (1..N), on ``rows``' device, float32."""
        table = self._on_device.get(rows.device)
        if table is None:
            table = self._on_device[rows.device] = self.log_expected.to(rows.device).float()
        return table[rows - 1]


def sampled_softmax_loss(
    readout: torch.Tensor,
    pos_emb: torch.Tensor,
    neg_emb: torch.Tensor,
    target_rows: torch.Tensor,
    neg_rows: torch.Tensor,
    log_q_pos: torch.Tensor | None = None,
    log_q_neg: torch.Tensor | None = None,
    remove_accidental_hits: bool = True,
) -> torch.Tensor:
    """Mean sampled-softmax cross-entropy.

    Args:
        readout: [B, d] read-out interests; pos_emb: [B, d] target embeddings;
        neg_emb: [n, d] shared negatives; target_rows: [B]; neg_rows: [n] item rows;
        log_q_pos / log_q_neg: [B] / [n] ``log(n·q)`` to subtract (None = no logQ correction).
    """
    pos = (readout * pos_emb).sum(-1, keepdim=True)  # [B, 1]
    neg = readout @ neg_emb.T  # [B, n]
    if log_q_pos is not None:
        pos = pos - log_q_pos.to(pos.dtype).unsqueeze(1)
    if log_q_neg is not None:
        neg = neg - log_q_neg.to(neg.dtype).unsqueeze(0)
    if remove_accidental_hits:
        neg = neg.masked_fill(neg_rows.unsqueeze(0) == target_rows.unsqueeze(1), _MASKED)
    logits = torch.cat([pos, neg], dim=1)
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device))


def full_softmax_loss(readout: torch.Tensor, item_vectors: torch.Tensor, target_rows: torch.Tensor) -> torch.Tensor:
    """Exact softmax cross-entropy over all N items (``item_vectors`` [N, d] = rows 1..N)."""
    return F.cross_entropy(readout @ item_vectors.T, target_rows - 1)


@dataclass(frozen=True)
class Pairs:
    """Matched (row, behavioural interest, semantic interest) index triples."""

    b: torch.Tensor
    k: torch.Tensor
    m: torch.Tensor

    def __len__(self) -> int:
        return int(self.b.numel())


def match_interests(
    beh: torch.Tensor, sem: torch.Tensor, sem_mask: torch.Tensor, method: str = "hungarian"
) -> Pairs:
    """One-to-one matching of K behavioural to M semantic interests per row, max total cosine.

    ``beh`` [B, K, D] and ``sem`` [B, M, D] must live in the same space; ``sem_mask`` [B, M]
    marks real semantic interests. Rows without any get no pairs. ``hungarian`` solves the
    assignment exactly (scipy); ``greedy`` repeatedly takes the most similar remaining pair
    (ties to the lowest indices). Each row yields ``min(K, #valid)`` pairs, sorted by (row, k).
    """
    device = beh.device
    with torch.no_grad():
        sim = torch.einsum(
            "bkd,bmd->bkm", F.normalize(beh.float(), dim=-1), F.normalize(sem.float(), dim=-1)
        ).cpu().numpy()
    mask = sem_mask.cpu().numpy().astype(bool)
    bs, ks, ms = [], [], []
    for row in np.flatnonzero(mask.any(axis=1)):
        valid = np.flatnonzero(mask[row])
        s = sim[row][:, valid]  # [K, V]
        if method == "hungarian":
            from scipy.optimize import linear_sum_assignment

            rk, cv = linear_sum_assignment(-s)
        elif method == "greedy":
            s = s.astype(np.float64).copy()
            rk, cv = [], []
            for _ in range(min(s.shape)):
                flat = int(np.argmax(s))  # first maximum in row-major order: lowest indices win ties
                i, j = divmod(flat, s.shape[1])
                rk.append(i)
                cv.append(j)
                s[i, :] = -np.inf
                s[:, j] = -np.inf
            rk, cv = np.asarray(rk), np.asarray(cv)
        else:
            raise ValueError(f"matching must be 'hungarian' or 'greedy', got {method!r}")
        order = np.argsort(rk, kind="stable")
        bs.append(np.full(len(rk), row))
        ks.append(np.asarray(rk)[order])
        ms.append(valid[np.asarray(cv)[order]])
    cat = lambda parts: torch.as_tensor(np.concatenate(parts) if parts else np.zeros(0), dtype=torch.long, device=device)
    return Pairs(cat(bs), cat(ks), cat(ms))


def semantic_prediction_loss(pred: torch.Tensor, sem: torch.Tensor, pairs: Pairs, kind: str = "cosine") -> torch.Tensor:
    """L_pred: mean ``1 - cos`` (or mean squared error per element) between projected behavioural
    interests ``pred`` [B, K, d_s] and their matched semantic vectors ``sem`` [B, M, d_s]."""
    if len(pairs) == 0:
        return pred.new_zeros(())
    p = pred[pairs.b, pairs.k]
    s = sem[pairs.b, pairs.m].to(p.dtype)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(p, s, dim=-1)).mean()
    if kind == "mse":
        return F.mse_loss(p, s)
    raise ValueError(f"pred_loss must be 'cosine' or 'mse', got {kind!r}")


def alignment_loss(
    beh: torch.Tensor, sem_proj: torch.Tensor, pairs: Pairs, tau: float = 0.1, symmetric: bool = True
) -> torch.Tensor:
    """L_align: in-batch InfoNCE between matched behavioural interests ``beh`` [B, K, d] and
    projected semantic interests ``sem_proj`` [B, M, d]; positives on the diagonal."""
    if len(pairs) == 0:
        return beh.new_zeros(())
    zb = F.normalize(beh[pairs.b, pairs.k], dim=-1)
    zs = F.normalize(sem_proj[pairs.b, pairs.m].to(zb.dtype), dim=-1)
    logits = zb @ zs.T / tau
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, labels)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, labels))
    return loss


def auxiliary_losses(
    interests: torch.Tensor,
    pred: torch.Tensor,
    sem_proj: torch.Tensor,
    sem: torch.Tensor,
    sem_mask: torch.Tensor,
    cfg: EsimConfig,
) -> tuple[torch.Tensor, torch.Tensor, Pairs]:
    """``(L_pred, L_align, pairs)`` for one batch; rows without semantic interests are ignored.

    Args:
        interests: [B, K, d] behavioural interests; pred: [B, K, d_s] = pred_head(interests);
        sem_proj: [B, M, d] = align_head(sem); sem: [B, M, d_s]; sem_mask: [B, M] bool.
    """
    if cfg.match_on == "pred":
        pairs = match_interests(pred, sem, sem_mask, cfg.matching)
    else:
        pairs = match_interests(interests, sem_proj, sem_mask, cfg.matching)
    l_pred = semantic_prediction_loss(pred, sem, pairs, cfg.pred_loss)
    l_align = alignment_loss(interests, sem_proj, pairs, cfg.tau, cfg.align_symmetric)
    return l_pred, l_align, pairs
