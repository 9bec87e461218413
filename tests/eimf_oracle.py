"""The independent single-process EIMF trainer the tests compare the training loop against.

Plain PyTorch, one process, no Ray, no DeepSpeed: the same seeded init, the loop's order
(epoch ``e`` uses ``default_rng([seed, e])``'s permutation; step ``s`` takes global rows
``[s·G, (s+1)·G)``, the tail dropped), one draw of shared negatives per step, mean loss over
the global batch, AdamW at a constant learning rate.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from distrec.config.eimf import EimfConfig
from distrec.model.interests.backbones import ItemIndex
from distrec.model.interests.eimf import (
    SemanticBank,
    build_model,
    build_sampler,
    encode_samples,
    make_batch,
    make_labels,
    step,
)


def train_eimf(samples: pa.Table, items: pa.Table, cfg: EimfConfig, labels: pa.Table | None = None,
               ) -> tuple[torch.nn.Module, dict]:
    """``(model in eval mode, metrics)``: ``steps``, ``epochs``, ``history`` (per step: ``step``,
    ``epoch`` and the loss parts), the parts' means over all steps and ``typical_fraction``."""
    from distrec.train.data_stream import epoch_order

    tc = cfg.train
    device = torch.device("cpu")
    torch.manual_seed(tc.seed)
    index = ItemIndex.from_items(items)
    data = encode_samples(samples, index, cfg.backbone.max_len)
    bank = SemanticBank(labels) if labels is not None else None
    model = build_model(index.num_items, cfg, bank.dim if bank is not None else None)
    sampler = build_sampler(cfg, index.num_items, data.target)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    per_epoch = len(data) // tc.batch_size
    total = per_epoch * tc.epochs if tc.max_steps is None else min(tc.max_steps, per_epoch * tc.epochs)
    history, n_steps = [], 0
    model.train()
    for epoch in range(tc.epochs):
        order = epoch_order(len(data), tc.seed, epoch)
        for s in range(per_epoch):
            if n_steps >= total:
                break
            idx = order[s * tc.batch_size:(s + 1) * tc.batch_size]
            loss, parts = step(model, make_batch(data, idx, device), make_labels(bank, data.user_id[idx], device),
                               cfg=cfg, sampler=sampler)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n_steps += 1
            history.append({"step": n_steps, "epoch": epoch, **parts})
    model.eval()
    means = {k: float(np.mean([h[k] for h in history])) if history else 0.0
             for k in ("loss", "loss_rec", "loss_pred", "loss_align")}
    typical = float(bank.typical(data.user_id).mean()) if bank is not None else 0.0
    return model, {"steps": n_steps, "epochs": tc.epochs, "history": history, **means, "typical_fraction": typical}
