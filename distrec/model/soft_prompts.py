"""SPA (ReLLaX §3.6): soft prompts from a frozen CRM's item embeddings, injected at placeholders.

The prompt text carries one ``" [hist]"`` marker after every shown history item and one
``" [target]"`` marker after the target title (``build_ctr_prompt(..., hist_marker=HIST_TOKEN,
target_marker=TARGET_TOKEN)``). :func:`add_placeholder_tokens` makes each marker a single
special token. :func:`inject` looks the prompt up in the LLM's (frozen) embedding table and
overwrites the marker positions with projected CRM embeddings; the result goes to the LLM
as ``inputs_embeds``.

The markers' own input-embedding rows are never used: every occurrence is overwritten. With
tied input/output embeddings (or any output head resized with the vocabulary) their rows do
appear in the output softmax as two extra vocabulary entries; the CTR score is the two-way
No/Yes softmax, which they do not touch.

ZeRO-3: :func:`inject` calls the embedding *module* (not its weight), so DeepSpeed's hooks
gather a partitioned table. The projector's parameters must belong to the module that
DeepSpeed wraps (e.g. a wrapper holding the LLM and the projector) to be trained and
partitioned with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from distrec.errors import DataError, ModelError

HIST_TOKEN = " [hist]"
TARGET_TOKEN = " [target]"


class Projector(nn.Module):
    """``Linear(d_crm→d_llm) → GELU → Linear(d_llm→d_llm)``; Xavier-normal weights, zero bias."""

    def __init__(self, d_crm: int, d_llm: int) -> None:
        super().__init__()
        self.d_crm, self.d_llm = d_crm, d_llm
        self.fc1 = nn.Linear(d_crm, d_llm)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_llm, d_llm)
        for lin in (self.fc1, self.fc2):
            nn.init.xavier_normal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(e)))


def add_placeholder_tokens(tokenizer, model: nn.Module | None = None) -> dict[str, int]:
    """Add ``" [hist]"`` / ``" [target]"`` as special tokens; resize ``model``'s embeddings.

    Idempotent. Returns ``{"hist": id, "target": id}``. The leading space belongs to the token
    (the marker is appended right after ``")"`` / the closing quote), matched verbatim
    (``normalized=False``). The new rows' values do not matter for the input side (see the
    module docstring). Under ZeRO-3 every rank must call this (the resize gathers the table).
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    new = [
        AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
        for t in (HIST_TOKEN, TARGET_TOKEN)
        if t not in vocab
    ]
    if new:
        tokenizer.add_tokens(new, special_tokens=True)
    ids = placeholder_token_ids(tokenizer)
    probe = tokenizer.encode(f"x (4 stars){HIST_TOKEN}\ny \"z\"{TARGET_TOKEN}?", add_special_tokens=False)
    if probe.count(ids["hist"]) != 1 or probe.count(ids["target"]) != 1:
        raise ModelError(
            f"the tokenizer does not encode {HIST_TOKEN!r} / {TARGET_TOKEN!r} as single tokens: {probe}"
        )
    if model is not None:
        n = len(tokenizer)
        if model.get_input_embeddings().num_embeddings < n:
            model.resize_token_embeddings(n, mean_resizing=False)
    return ids


def placeholder_token_ids(tokenizer) -> dict[str, int]:
    """``{"hist": id, "target": id}`` of the markers already in ``tokenizer``."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (HIST_TOKEN, TARGET_TOKEN) if t not in vocab]
    if missing:
        raise ModelError(f"tokenizer lacks the SPA placeholder tokens {missing}: call add_placeholder_tokens")
    return {"hist": vocab[HIST_TOKEN], "target": vocab[TARGET_TOKEN]}


def _flatten_history(
    hist_item_embs: Sequence[torch.Tensor] | torch.Tensor,
    hist_counts: Sequence[int] | torch.Tensor | None,
    batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (all rows' history embeddings row after row ``[Σn_i, d]``, counts ``[B]``)."""
    if isinstance(hist_item_embs, torch.Tensor):
        if hist_item_embs.dim() != 3 or hist_counts is None:
            raise DataError("SPA: a history tensor must be padded [B, N, d_crm] and come with hist_counts")
        counts = torch.as_tensor(hist_counts, device=hist_item_embs.device).long()
        if counts.shape != (batch,) or hist_item_embs.shape[0] != batch:
            raise DataError(f"SPA: history of {hist_item_embs.shape[0]} rows / {tuple(counts.shape)} counts for a batch of {batch}")
        if bool((counts < 0).any()) or bool((counts > hist_item_embs.shape[1]).any()):
            raise DataError(f"SPA: hist_counts must lie in 0..{hist_item_embs.shape[1]}, got {counts.tolist()}")
        valid = torch.arange(hist_item_embs.shape[1], device=counts.device)[None, :] < counts[:, None]
        return hist_item_embs[valid], counts
    rows = list(hist_item_embs)
    if len(rows) != batch:
        raise DataError(f"SPA: history embeddings for {len(rows)} rows, batch has {batch}")
    if hist_counts is not None:
        raise DataError("SPA: hist_counts goes with a padded tensor, not a list of per-row tensors")
    bad = [i for i, r in enumerate(rows) if r.dim() != 2]
    if bad:
        raise DataError(f"SPA: row {bad[0]}'s history embeddings must be [n_hist, d_crm]")
    counts = torch.tensor([r.shape[0] for r in rows])
    return torch.cat(rows, dim=0), counts


def inject(
    embed_tokens: nn.Module,
    input_ids: torch.Tensor,
    placeholder_ids: Mapping[str, int],
    hist_item_embs: Sequence[torch.Tensor] | torch.Tensor,
    target_item_embs: torch.Tensor,
    projector: nn.Module,
    hist_counts: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """``inputs_embeds [B, T, d_llm]``: token embeddings with the markers replaced.

    ``hist_item_embs``: per row ``[n_hist_i, d_crm]`` in *prompt order*, or a padded
    ``[B, N, d_crm]`` tensor with ``hist_counts``. ``target_item_embs``: ``[B, d_crm]``. The
    token embeddings are detached (the table stays frozen); gradients reach ``projector``.
    Raises :class:`DataError` when a row's number of ``[hist]`` markers differs from its
    history count (e.g. truncation dropped items without dropping their embeddings) or a
    row has not exactly one ``[target]``.
    """
    if input_ids.dim() != 2:
        raise DataError(f"SPA: input_ids must be [B, T], got {tuple(input_ids.shape)}")
    batch = input_ids.shape[0]
    embeds = embed_tokens(input_ids).detach()
    hist_flat, counts = _flatten_history(hist_item_embs, hist_counts, batch)
    if target_item_embs.dim() != 2 or target_item_embs.shape[0] != batch:
        raise DataError(f"SPA: target embeddings must be [B={batch}, d_crm], got {tuple(target_item_embs.shape)}")
    hist_mask = input_ids == placeholder_ids["hist"]
    target_mask = input_ids == placeholder_ids["target"]
    n_hist = hist_mask.sum(dim=1).cpu()
    n_target = target_mask.sum(dim=1).cpu()
    counts = counts.cpu()
    if not torch.equal(n_hist, counts):
        row = int((n_hist != counts).nonzero()[0, 0])
        raise DataError(
            f"SPA: row {row} has {int(n_hist[row])} [hist] placeholders but {int(counts[row])} history "
            "item embeddings (were history items truncated from the prompt only?)"
        )
    if not bool((n_target == 1).all()):
        row = int((n_target != 1).nonzero()[0, 0])
        raise DataError(f"SPA: row {row} has {int(n_target[row])} [target] placeholders, expected exactly 1")
    param = next(projector.parameters(), None)
    dtype = param.dtype if param is not None else embeds.dtype
    n = hist_flat.shape[0]
    projected = projector(torch.cat([hist_flat.to(dtype), target_item_embs.to(dtype)], dim=0)).to(embeds.dtype)
    if projected.shape != (n + batch, embeds.shape[-1]):
        raise ModelError(
            f"SPA: projector output {tuple(projected.shape)} does not match the LLM embedding width {embeds.shape[-1]}"
        )
    # masked_scatter fills positions in row-major order: row by row, left to right = prompt order.
    out = embeds.masked_scatter(hist_mask.unsqueeze(-1), projected[:n])
    return out.masked_scatter(target_mask.unsqueeze(-1), projected[n:])


class SoftPromptLM(nn.Module):
    """The causal LM plus SPA's projector, as one module for DeepSpeed to wrap and partition.

    ``forward(input_ids, attention_mask, ..., spa=None)``: with ``spa`` — a dict of ``hist``
    ``[B, N, d_crm]``, ``counts`` ``[B]`` and ``target`` ``[B, d_crm]`` (frozen CRM item
    embeddings in prompt order) — the placeholder positions of ``input_ids`` are replaced by
    their projections (:func:`inject`) and the LM runs on ``inputs_embeds``; without it the LM
    runs on ``input_ids`` unchanged. Other keyword arguments go to the LM.
    """

    def __init__(self, llm: nn.Module, projector: Projector, placeholder_ids: Mapping[str, int]) -> None:
        super().__init__()
        self.llm = llm
        self.projector = projector
        self.placeholder_ids = dict(placeholder_ids)

    def forward(self, input_ids: torch.Tensor, spa: Mapping[str, torch.Tensor] | None = None, **kwargs):
        if spa is None:
            return self.llm(input_ids=input_ids, **kwargs)
        embeds = inject(self.llm.get_input_embeddings(), input_ids, self.placeholder_ids, spa["hist"],
                        spa["target"], self.projector, hist_counts=spa["counts"])
        return self.llm(inputs_embeds=embeds, **kwargs)

    def export_projector(self, out_dir, gathered, is_rank0: bool):
        """Write ``projector.safetensors`` + ``spa_config.json`` (rank 0; every rank gathers)."""
        import json
        from pathlib import Path

        from safetensors.torch import save_file

        from distrec import atomic

        params = dict(self.projector.named_parameters())
        with gathered(list(params.values())):
            if not is_rank0:
                return None
            state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in params.items()}
        config = {"d_crm": self.projector.d_crm, "d_llm": self.projector.d_llm, "markers": [HIST_TOKEN, TARGET_TOKEN],
                  "placeholder_ids": self.placeholder_ids}
        with atomic.staged(Path(out_dir), ("projector.safetensors", "spa_config.json"), overwrite=True) as tmp:
            save_file(state, str(tmp / "projector.safetensors"))
            (tmp / "spa_config.json").write_text(json.dumps(config, indent=2))
        return Path(out_dir)
