"""A trained DIN on disk: ``din.safetensors`` (weights + ``catalog_ids``), ``din_config.json``
(its :class:`~distrec.config.din.DinConfig` and catalogue size) and, once evaluated,
``metrics.json``. :func:`write_din` fills a staged folder (:func:`distrec.atomic.staged`), so a
folder is published whole or not at all."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from distrec import atomic
from distrec.config.din import DinConfig
from distrec.errors import ModelError
from distrec.model.crm.din import DIN

WEIGHTS = "din.safetensors"
CONFIG = "din_config.json"
METRICS = "metrics.json"
#: Files a complete DIN folder holds.
REQUIRED = (WEIGHTS, CONFIG)


def json_safe(x: Any) -> Any:
    """``x`` with non-finite floats as None (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def write_din(folder: Path, state: dict[str, torch.Tensor], cfg: DinConfig, metrics: dict | None = None) -> None:
    """The DIN files into an existing (staged) ``folder``; ``state``: the model's state dict."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(folder / WEIGHTS))
    n_items = int(state["catalog_ids"].numel())
    (folder / CONFIG).write_text(json.dumps({"format": 1, "n_items": n_items, "config": dataclasses.asdict(cfg)},
                                            indent=2) + "\n")
    if metrics is not None:
        (folder / METRICS).write_text(json.dumps(json_safe(metrics), indent=2) + "\n")


def load_din(path: str | Path, device: str | torch.device = "cpu") -> DIN:
    """The DIN saved in ``path``, in eval mode; ModelError when the folder is incomplete.
    Settings a newer distrec no longer has (``device``) are ignored."""
    from safetensors.torch import load_file

    root = Path(path)
    if not atomic.is_complete(root, REQUIRED):
        raise ModelError(f"{root}: not a DIN folder (needs {WEIGHTS} and {CONFIG})")
    meta = json.loads((root / CONFIG).read_text())
    known = {f.name for f in dataclasses.fields(DinConfig)}
    cfg = DinConfig(**{k: v for k, v in meta["config"].items() if k in known})
    state = load_file(str(root / WEIGHTS))
    model = DIN(state["catalog_ids"].numpy(), cfg)
    model.load_state_dict(state)
    return model.to(device).eval()
