"""Data-parallel IBIM (+ ESIM) training under Ray Train: a ``TorchTrainer`` around ``train.step``.

Why a second loop: :func:`distrec.interests.train.train_eimf` is the single-process reference;
this one runs the same :func:`~distrec.interests.train.step` on W ranks with DDP (gloo on CPU,
NCCL on GPU, both picked by Ray Train), so a run scales out without changing what one step
computes.

Batching. ``train.batch_size`` is the **global** batch G (it must be divisible by W). Epoch
``e`` uses the ``e``-th permutation of ``np.random.default_rng(train.seed)``, as
``train_eimf`` does; step ``s`` takes ``perm[s·G:(s+1)·G]`` and rank ``r`` its ``r``-th
contiguous slice of G/W rows. The tail ``n mod G`` is dropped, so every rank runs ``n // G``
steps an epoch (DDP needs equal step counts). Every rank builds the same seeded negative
sampler, so all ranks share one set of negatives a step, as one process does for its batch.

Consequence (the tests' truth): without ESIM losses, DDP's gradient average of the ranks'
mean losses is the gradient of the mean over the whole global batch, so W ranks equal one
process on G rows to float tolerance, and with ``n mod G = 0`` one rank equals ``train_eimf``.
With λ > 0 the in-batch InfoNCE and the matching see only a rank's slice, so that equality
is approximate. ESIM heads get ``find_unused_parameters=True`` (a slice without typical
users leaves them without gradient).

Outputs. After every epoch rank 0 reports a checkpoint that is itself an artefact
(``model.safetensors`` + ``eimf_config.json``) plus ``train_state.pt`` (optimiser, sampler RNG,
epoch, step) from which a restarted run resumes. At the end rank 0 writes the artefact
(+ ``metrics.json``) to ``out_dir`` atomically via :func:`distrec.data.storage.staged_folder`
(on a multi-node cluster ``out_dir`` must be shared storage). :func:`train_eimf_ray` returns
the final weights, loaded on the driver from the last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from distrec.config import RayConfig
from distrec.data import storage
from distrec.errors import ConfigError, DataError, ModelError
from distrec.interests.backbones import ItemIndex
from distrec.interests.config import EimfConfig, eimf_config_from_dict
from distrec.interests.train import (
    EimfModel,
    SemanticBank,
    build_model,
    build_sampler,
    encode_samples,
    make_batch,
    make_labels,
    step,
)

WEIGHTS = "model.safetensors"
CONFIG = "eimf_config.json"
METRICS = "metrics.json"
TRAIN_STATE = "train_state.pt"
_ITEM_IDS = "meta.item_ids"  # the catalogue, stored next to the weights
PARTS = ("loss", "loss_rec", "loss_pred", "loss_align", "n_pairs", "n_typical")  # step() parts, in this order
_COUNTS = ("n_pairs", "n_typical")  # summed over ranks; the losses are averaged


# --------------------------------------------------------------------------- artefact


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


# --------------------------------------------------------------------------- worker


def epoch_permutations(n: int, seed: int):
    """The per-epoch permutations of ``train_eimf``: successive draws of ``default_rng(seed)``
    (a resumed run replays the epochs it skips)."""
    rng = np.random.default_rng(seed)
    while True:
        yield rng.permutation(n)


def steps_per_epoch(n: int, global_batch: int, world: int) -> int:
    """``n // G`` (the tail is dropped); ConfigError/DataError when G/W or one step is impossible."""
    if global_batch % world:
        raise ConfigError(f"eimf.train.batch_size={global_batch} must be divisible by ray.num_workers={world}")
    if n < global_batch:
        raise DataError(f"train split has {n} samples: fewer than one global batch (eimf.train.batch_size={global_batch})")
    return n // global_batch


def _reduce_log(rows: list[list[float]], world: int, device: torch.device) -> np.ndarray:
    """Per-step parts [S, len(PARTS)] over all ranks (one collective an epoch): losses
    averaged, counts summed. ``device``: the rank's device (NCCL reduces CUDA tensors only)."""
    log = torch.tensor(rows, dtype=torch.float64).reshape(-1, len(PARTS))
    if world > 1:
        import torch.distributed as dist

        log = log.to(device)
        dist.all_reduce(log)
        scale = torch.tensor([1.0 if p in _COUNTS else 1.0 / world for p in PARTS], dtype=torch.float64)
        log = log.cpu() * scale
    return log.numpy()


def _save_checkpoint(model, index, cfg, opt, sampler, epoch: int, n_steps: int, metrics: dict):
    """Rank 0's checkpoint folder contents (an artefact + resumable state) and the report."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="eimf-ckpt-") as tmp:
        save_eimf(model, index, cfg, Path(tmp), metrics)
        train_state = {"epoch": epoch, "n_steps": n_steps, "opt": opt.state_dict()}
        if sampler is not None:
            train_state["sampler_rng"] = sampler.generator.get_state()
        torch.save(train_state, Path(tmp) / TRAIN_STATE)
        ray.train.report(_scalars(metrics), checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


def _restore(model, opt, sampler) -> tuple[int, int, dict]:
    """``(first epoch to run, steps done, metrics so far)`` from Ray's latest checkpoint."""
    import ray.train
    from safetensors.torch import load_file

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, 0, {}
    with ckpt.as_directory() as d:
        state = load_file(str(Path(d) / WEIGHTS))
        state.pop(_ITEM_IDS)
        model.load_state_dict(state)
        ts = torch.load(Path(d) / TRAIN_STATE, weights_only=True)  # optimizer state and RNG: plain tensors
        metrics = json.loads((Path(d) / METRICS).read_text())
    opt.load_state_dict(ts["opt"])
    if sampler is not None:
        sampler.generator.set_state(ts["sampler_rng"])
    return ts["epoch"] + 1, ts["n_steps"], metrics


def train_worker(loop_config: dict) -> None:
    """``train_loop_per_worker``. ``loop_config``: ``cfg`` (dict), ``tables`` (object refs of
    samples, items, labels or None), ``out_dir`` (str or None)."""
    import ray
    import ray.train
    import ray.train.torch

    cfg = eimf_config_from_dict(loop_config["cfg"])
    tc = cfg.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    samples, items, labels = (ray.get(r) if r is not None else None for r in loop_config["tables"])
    index = ItemIndex.from_items(items)
    data = encode_samples(samples, index, cfg.backbone.max_len)
    bank = SemanticBank(labels) if labels is not None else None

    torch.manual_seed(tc.seed)  # same init on every rank, as train_eimf
    model = build_model(index.num_items, cfg, bank.dim if bank is not None else None)
    sampler = build_sampler(cfg, index.num_items, data.target)  # same negatives on every rank
    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": model.heads is not None})
    device = ray.train.torch.get_device()
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    start_epoch, n_steps, done = _restore(model, opt, sampler)
    history: list[dict] = done.get("history", [])
    seconds = done.get("train_time_s", 0.0)
    metrics = done or None

    n_per_epoch = steps_per_epoch(len(data), tc.batch_size, world)
    per_rank = tc.batch_size // world
    started = time.perf_counter()
    model.train()
    for epoch, perm in zip(range(tc.epochs), epoch_permutations(len(data), tc.seed)):
        if epoch < start_epoch:
            continue
        if tc.max_steps is not None and n_steps >= tc.max_steps:
            break
        rows: list[list[float]] = []
        for s in range(n_per_epoch):
            if tc.max_steps is not None and n_steps >= tc.max_steps:
                break
            idx = perm[s * tc.batch_size + rank * per_rank : s * tc.batch_size + (rank + 1) * per_rank]
            batch = make_batch(data, idx, device)
            loss, parts = step(ddp, batch, make_labels(bank, data.user_id[idx], device), cfg=cfg, sampler=sampler)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n_steps += 1
            rows.append([parts[p] for p in PARTS])
        log = _reduce_log(rows, world, device)
        first = n_steps - len(log) + 1
        history.extend({"step": first + j, "epoch": epoch, **dict(zip(PARTS, map(float, r)))} for j, r in enumerate(log))
        metrics = _metrics(history, epoch, n_steps, seconds + time.perf_counter() - started, bank, data, world)
        if rank == 0:
            _save_checkpoint(model, index, cfg, opt, sampler, epoch, n_steps, metrics)
        else:
            ray.train.report(_scalars(metrics))
    if rank == 0 and loop_config.get("out_dir") and metrics is not None:
        with storage.staged_folder(Path(loop_config["out_dir"]), overwrite=True, error=ModelError) as tmp:
            save_eimf(model, index, cfg, tmp, metrics)


def _metrics(history: list[dict], epoch: int, n_steps: int, seconds: float, bank, data, world: int) -> dict:
    """Mean parts over all steps so far, plus the per-step ``history`` (global values)."""
    mean = {p: float(np.mean([h[p] for h in history])) if history else 0.0 for p in PARTS if p.startswith("loss")}
    typical = float(bank.typical(data.user_id).mean()) if bank is not None else 0.0
    return {"epoch": epoch, "epochs": epoch + 1, "steps": n_steps, **mean, "typical_fraction": typical,
            "train_time_s": seconds, "world_size": world, "history": history}


# --------------------------------------------------------------------------- driver


def train_eimf_ray(
    samples_table: pa.Table,
    items_table: pa.Table,
    cfg: EimfConfig,
    labels_table: pa.Table | None = None,
    *,
    ray_cfg: RayConfig | None = None,
    out_dir: str | Path | None = None,
    name: str | None = None,
) -> tuple[EimfModel, dict]:
    """Train on ``ray_cfg.num_workers`` ranks; ``(model on CPU in eval mode, metrics)``.

    ``metrics`` as :func:`~distrec.interests.train.train_eimf` (means over all steps, per-step
    ``history`` with rank-averaged losses, ``typical_fraction``, ``train_time_s``) plus
    ``world_size`` and ``checkpoint`` (the Ray checkpoint folder). ``out_dir``: where rank 0
    writes the artefact (see :func:`load_eimf`). Starts a local Ray when none is running.
    """
    ray_cfg = ray_cfg or RayConfig(num_workers=1)
    from distrec.train.launcher import loopback_env

    loopback_env(ray_cfg)
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from distrec.storage_uri import locate
    from distrec.train.launcher import init_ray

    steps_per_epoch(samples_table.num_rows, cfg.train.batch_size, ray_cfg.num_workers)  # fail before starting workers
    init_ray(ray_cfg)
    tables = [ray.put(samples_table), ray.put(items_table), ray.put(labels_table) if labels_table is not None else None]
    storage = locate(ray_cfg.storage_path)  # a local folder or a URI (s3://...): checkpoints go there
    run_name = name or ray_cfg.run_name or f"eimf-{time.strftime('%Y%m%d-%H%M%S')}"
    resources = {"CPU": ray_cfg.cpus_per_worker, **({"GPU": 1} if ray_cfg.use_gpu else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"cfg": dataclasses.asdict(cfg), "tables": tables,
                           "out_dir": str(Path(out_dir).resolve()) if out_dir is not None else None},
        scaling_config=ScalingConfig(num_workers=ray_cfg.num_workers, use_gpu=ray_cfg.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=run_name,
            **storage.ray_storage(),
            failure_config=FailureConfig(max_failures=ray_cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=ray_cfg.num_to_keep),
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    if result.checkpoint is None:
        raise ModelError(f"EIMF run {run_name}: finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        model, _, _ = load_eimf(d)
        metrics = json.loads((Path(d) / METRICS).read_text())
    metrics["checkpoint"] = result.checkpoint.path
    return model, metrics


__all__ = ["epoch_permutations", "load_eimf", "save_eimf", "steps_per_epoch", "train_eimf_ray", "train_worker"]
