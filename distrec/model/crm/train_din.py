"""Train, select, test, save and load the DIN CRM on a prepared CTR folder (plain PyTorch).

:func:`train_din`: Adam + BCE on the ``train`` split (seeded shuffles and init, CPU or GPU),
valid AUC after every epoch; the epoch with the best valid AUC is kept (ties: the earlier
epoch; a single-class valid split falls back to valid LogLoss); training stops after
``patience`` epochs without improvement. The test split is scored once, with the selected
weights, by :func:`distrec.metrics.ctr_metrics.ctr_metrics` — it never takes part in selection.

Output folder (written into a temp sibling, then moved into place):
``din.safetensors`` (weights + ``catalog_ids``), ``din_config.json`` (the :class:`DinConfig`
and catalogue size), ``metrics.json``. :func:`load_din` restores the model in eval mode.

History fed to DIN: the last ``hist_len`` items of ``history_item_ids`` (``history=
"recent"``), or, on a SUBR folder, the items at ``history_indices`` (the last ``hist_len`` of
them; ``history="retrieved"``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from distrec import atomic
from distrec.data import storage
from distrec.errors import DataError, ModelError
from distrec.metrics.ctr_metrics import ctr_metrics
from distrec.config.din import DinConfig
from distrec.model.crm.din import DIN

WEIGHTS = "din.safetensors"
CONFIG = "din_config.json"
METRICS = "metrics.json"
#: Files a complete DIN folder holds.
REQUIRED = (WEIGHTS, CONFIG)


def _list_parts(col: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.int64)


def history_matrix(table: pa.Table, hist_len: int, history: str = "recent") -> tuple[np.ndarray, np.ndarray]:
    """``(ids int64 [N, hist_len], mask bool [N, hist_len])``: each sample's last ``hist_len``
    history items (oldest first, right-padded with 0)."""
    offsets, flat = _list_parts(table.column("history_item_ids"))
    if history == "retrieved":
        if "history_indices" not in table.column_names:
            raise DataError("DIN history='retrieved' needs a SUBR folder (a 'history_indices' column)")
        sel_off, sel = _list_parts(table.column("history_indices"))
        row = np.repeat(np.arange(offsets.size - 1), np.diff(sel_off))
        if sel.size and (sel.min() < 0 or (sel >= np.diff(offsets)[row]).any()):
            raise DataError("history_indices point outside history_item_ids")
        flat = flat[offsets[:-1][row] + sel]
        offsets = sel_off
    n = offsets.size - 1
    lengths = np.diff(offsets)
    take = np.minimum(lengths, hist_len)
    ids = np.zeros((n, hist_len), dtype=np.int64)
    mask = np.zeros((n, hist_len), dtype=bool)
    row = np.repeat(np.arange(n), take)
    col = np.arange(int(take.sum())) - np.repeat(np.cumsum(take) - take, take)
    src = np.repeat(offsets[1:] - take, take) + col
    ids[row, col] = flat[src]
    mask[row, col] = True
    return ids, mask


def _tensors(table: pa.Table, cfg: DinConfig) -> dict[str, torch.Tensor]:
    for col in ("item_id", "label", "history_item_ids", "user_id"):
        if col not in table.column_names:
            raise DataError(f"DIN: samples lack column '{col}'; found {table.column_names}")
    ids, mask = history_matrix(table, cfg.hist_len, cfg.history)
    return {
        "history_ids": torch.from_numpy(ids),
        "history_mask": torch.from_numpy(mask),
        "target_ids": torch.from_numpy(table.column("item_id").to_numpy().astype(np.int64)),
        "label": torch.from_numpy(table.column("label").to_numpy().astype(np.float32)),
        "user_id": torch.from_numpy(table.column("user_id").to_numpy().astype(np.int64)),
    }


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def predict(model: DIN, data: dict[str, torch.Tensor], batch_size: int = 4096) -> np.ndarray:
    """P(label = 1) for every sample of ``data`` (as built by :func:`_tensors`)."""
    device = model.catalog_ids.device
    was = model.training
    model.eval()
    out = []
    n = data["target_ids"].shape[0]
    for lo in range(0, n, batch_size):
        sl = slice(lo, lo + batch_size)
        logit, _ = model(
            data["history_ids"][sl].to(device), data["history_mask"][sl].to(device), data["target_ids"][sl].to(device)
        )
        out.append(torch.sigmoid(logit.float()).cpu())
    model.train(was)
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def evaluate(model: DIN, data: dict[str, torch.Tensor], batch_size: int = 4096) -> dict[str, float]:
    probs = predict(model, data, batch_size)
    return ctr_metrics(data["label"].numpy(), probs, data["user_id"].numpy())


def _selection_score(metrics: dict[str, float]) -> float:
    auc = metrics["auc"]
    return auc if not math.isnan(auc) else -metrics["logloss"]


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(_json_safe(data), indent=2) + "\n")  # inside a staged folder: published whole


def save_din(model: DIN, out_dir: str | Path, metrics: dict[str, Any] | None = None, overwrite: bool = True) -> Path:
    """Atomically write ``din.safetensors`` + ``din_config.json`` (+ ``metrics.json``) to ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    with storage.staged_folder(out, overwrite, error=ModelError, required=REQUIRED) as tmp:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS))
        _write_json(tmp / CONFIG, {"format": 1, "n_items": model.n_items, "config": dataclasses.asdict(model.config)})
        if metrics is not None:
            _write_json(tmp / METRICS, metrics)
    return out


def load_din(path: str | Path, device: str | torch.device = "cpu") -> DIN:
    """The DIN saved in ``path`` (by :func:`train_din` / :func:`save_din`), in eval mode."""
    from safetensors.torch import load_file

    root = Path(path)
    if not atomic.is_complete(root, REQUIRED):
        raise ModelError(f"{root}: not a DIN folder (needs {WEIGHTS} and {CONFIG})")
    meta = json.loads((root / CONFIG).read_text())
    cfg = DinConfig(**meta["config"])
    state = load_file(str(root / WEIGHTS))
    model = DIN(state["catalog_ids"].numpy(), cfg)
    model.load_state_dict(state)
    return model.to(device).eval()


def train_din(
    prepared_dir: str | Path,
    cfg: DinConfig | None = None,
    out_dir: str | Path | None = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Train DIN on ``prepared_dir``'s train split; select on valid AUC; report test metrics.

    Returns the metrics dict also written to ``out_dir/metrics.json`` (when ``out_dir`` is
    given): ``best_epoch``, ``epochs_run``, ``history`` (per epoch: train loss, valid AUC and
    LogLoss), ``valid`` and ``test`` (``ctr_metrics`` of the selected weights; ``test`` is
    None when the folder has no test split), ``n_params``, ``device``, ``seconds``.
    """
    cfg = cfg or DinConfig()
    root = Path(prepared_dir)
    manifest = storage.read_manifest(root)
    for split in ("train", "valid"):
        if split not in manifest["splits"] or manifest["splits"][split]["rows"] == 0:
            raise DataError(f"{root}: DIN needs a non-empty '{split}' split")
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    device = _device(cfg.device)
    items = storage.open_table(root, "items")
    model = DIN(items.column("item_id").to_numpy().astype(np.int64), cfg).to(device)
    train = _tensors(storage.open_split(root, "train"), cfg)
    valid = _tensors(storage.open_split(root, "valid"), cfg)
    has_test = "test" in manifest["splits"] and manifest["splits"]["test"]["rows"] > 0
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n = train["target_ids"].shape[0]
    best_score, best_epoch, best_state, stale = -math.inf, 0, None, 0
    history = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        order = torch.from_numpy(np.random.default_rng([cfg.seed, epoch]).permutation(n))
        total, steps = 0.0, 0
        for lo in range(0, n, cfg.batch_size):
            idx = order[lo : lo + cfg.batch_size]
            logit, _ = model(
                train["history_ids"][idx].to(device),
                train["history_mask"][idx].to(device),
                train["target_ids"][idx].to(device),
            )
            loss = loss_fn(logit, train["label"][idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        v = evaluate(model, valid, cfg.eval_batch_size)
        history.append({"epoch": epoch, "train_loss": total / max(steps, 1), "valid_auc": v["auc"], "valid_logloss": v["logloss"]})
        score = _selection_score(v)
        if score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = copy.deepcopy({k: t.detach().clone() for k, t in model.state_dict().items()})
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    metrics: dict[str, Any] = {
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "history": history,
        "valid": evaluate(model, valid, cfg.eval_batch_size),
        "test": evaluate(model, _tensors(storage.open_split(root, "test"), cfg), cfg.eval_batch_size) if has_test else None,
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "device": str(device),
        "train_samples": int(n),
        "config": dataclasses.asdict(cfg),
        "prepared_dir": str(root.resolve()),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if out_dir is not None:
        save_din(model, out_dir, metrics, overwrite=overwrite)
    return metrics
