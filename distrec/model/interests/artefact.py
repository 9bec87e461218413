"""An EIMF stage on disk: ``model.safetensors`` (all weights + the catalogue's item ids) and
``eimf_config.json`` (the :class:`~distrec.config.eimf.EimfConfig`, catalogue size, d_s or null),
plus ``metrics.json`` when given. The serving model is the backbone alone (``heads=False``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from distrec.config.eimf import EimfConfig, eimf_config_from_dict
from distrec.errors import ModelError
from distrec.model.interests.backbones import ItemIndex
from distrec.model.interests.eimf import EimfModel, build_model

WEIGHTS = "model.safetensors"
CONFIG = "eimf_config.json"
METRICS = "metrics.json"
_ITEM_IDS = "meta.item_ids"  # the catalogue, stored next to the weights


def save_eimf(model: EimfModel, index: ItemIndex, cfg: EimfConfig, out: Path, metrics: dict | None = None) -> Path:
    """Write ``model.safetensors`` (all weights + the item ids [N]), ``eimf_config.json`` (config,
    N, d_s or null) and optionally ``metrics.json`` into ``out`` (created when missing). Not atomic
    by itself: callers pass a :func:`~distrec.data.storage.staged_folder` or a checkpoint temp dir."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    state[_ITEM_IDS] = torch.from_numpy(np.ascontiguousarray(index.ids, dtype=np.int64))
    save_file(state, str(out / WEIGHTS))
    semantic_dim = None
    if model.heads is not None:  # d_s = the input width of the align head (linear or mlp)
        semantic_dim = next(m for m in model.heads.align.modules() if isinstance(m, torch.nn.Linear)).in_features
    meta = {"format": 1, "num_items": index.num_items, "semantic_dim": semantic_dim, "config": dataclasses.asdict(cfg)}
    (out / CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    if metrics is not None:
        (out / METRICS).write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    return out


def load_eimf(path: str | Path, heads: bool = True, device: str | torch.device = "cpu") -> tuple[EimfModel, ItemIndex, EimfConfig]:
    """``(model, item index, config)`` from a folder written by :func:`save_eimf`, in eval mode.

    ``heads=False`` (or an artefact whose ESIM heads were deleted) gives the serving model:
    the backbone alone, no labels, no LLM.
    """
    from safetensors.torch import load_file

    root = Path(path)
    if not (root / WEIGHTS).is_file() or not (root / CONFIG).is_file():
        raise ModelError(f"{root}: not an EIMF artefact (needs {WEIGHTS} and {CONFIG})")
    meta = json.loads((root / CONFIG).read_text())
    cfg = eimf_config_from_dict(meta["config"])
    state = load_file(str(root / WEIGHTS))
    index = ItemIndex(ids=state.pop(_ITEM_IDS).numpy())
    has_heads = any(k.startswith("heads.") for k in state)
    keep_heads = heads and has_heads and meta.get("semantic_dim") is not None
    if not keep_heads:
        state = {k: v for k, v in state.items() if not k.startswith("heads.")}
    with torch.random.fork_rng(devices=[]):  # the init is overwritten; leave the caller's RNG alone
        model = build_model(index.num_items, cfg, meta["semantic_dim"] if keep_heads else None)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(f"{root / WEIGHTS}: does not fit the model in {CONFIG}: {exc}") from None
    return model.to(device).eval(), index, cfg
