"""Training checkpoints: DeepSpeed shards + distrec's own position and RNG, reported to Ray.

A checkpoint directory holds ``ds/`` (each rank's DeepSpeed shard: adapter weights, optimizer
and scheduler state), ``state.json`` (step, epoch, step within the epoch — Ray Data has no
resumable cursor, so distrec keeps the data position itself), ``rng_rank<r>.pt`` per rank and,
once a validation has run, ``best_trainable.safetensors`` (the best state so far, so a resumed
run still selects among validations made before the interruption). Every rank reports its
directory; Ray Train merges them into one checkpoint in storage.

At the end of training the selected state (best validation, else final) is also written to
the run folder as ``selected_trainable.safetensors``, which ``distrec eval --run`` reloads.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

DS_TAG = "ds"
BEST = "best_trainable.safetensors"


@dataclass
class TrainState:
    """Where training stands; everything needed to continue the data stream exactly."""

    step: int = 0  # optimiser steps done in total
    epoch: int = 0
    step_in_epoch: int = 0  # optimiser steps done in the current epoch
    best_metric: float | None = None
    best_step: int | None = None  # the step whose validation gave ``best_metric``
    stale_evals: int = 0  # validations since the last improvement (train.patience)
    stopped_early: bool = False  # train.patience ran out: training is over

    def finished(self, total_steps: int) -> bool:
        return self.stopped_early or self.step >= total_steps


def _rng_state(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state(), **{f"task.{k}": g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_and_report(strategy, state: TrainState, metrics: dict, best: dict[str, torch.Tensor] | None = None,
                    upload=None, generators: dict[str, torch.Generator] | None = None) -> None:
    """Write this rank's part of a checkpoint and report it (a collective: all ranks call it).

    ``best``: the best validation state so far (whole tensors, identical on every rank).
    ``upload``: a ``checkpoint_upload_fn`` replacing Ray's copy into storage (fault injection only).
    ``generators``: the task's own random streams (EIMF's negatives), saved with the rank's RNG."""
    import ray.train
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory(prefix="distrec-ckpt-") as tmp:
        strategy.save_checkpoint(tmp, DS_TAG)
        torch.save(_rng_state(generators or {}), Path(tmp) / f"rng_rank{strategy.rank}.pt")
        if strategy.is_rank0:
            (Path(tmp) / "state.json").write_text(json.dumps(asdict(state)))
            if best is not None:
                save_file({k: v.detach().cpu().contiguous() for k, v in best.items()}, str(Path(tmp) / BEST))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_upload_fn=upload)


def restore(strategy, checkpoint, generators: dict[str, torch.Generator] | None = None,
            ) -> tuple[TrainState, dict[str, torch.Tensor] | None]:
    """Load engine state, data position and RNG (the task's ``generators`` included) from a Ray
    checkpoint; returns the state and the best validation state saved with it (None before any
    validation)."""
    from safetensors.torch import load_file

    with checkpoint.as_directory() as directory:
        root = Path(directory)
        strategy.load_checkpoint(str(root), DS_TAG)
        state = TrainState(**json.loads((root / "state.json").read_text()))
        best = load_file(str(root / BEST)) if (root / BEST).is_file() else None
        rng_file = root / f"rng_rank{strategy.rank}.pt"
        if rng_file.is_file():
            rng = torch.load(rng_file, weights_only=True)
            torch.set_rng_state(rng["cpu"])
            for name, generator in (generators or {}).items():
                generator.set_state(rng[f"task.{name}"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
    return state, best


SELECTED = "selected_trainable.safetensors"


def save_selected(state: dict[str, torch.Tensor], run_dir: Path, is_rank0: bool) -> None:
    """The selected trainable tensors (adapter, projector), keyed by parameter name, for ``distrec eval``."""
    if not is_rank0:
        return
    from safetensors.torch import save_file

    tmp = run_dir / f".{SELECTED}.tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(run_dir / SELECTED)


def load_selected(model, run_dir: Path) -> dict[str, torch.Tensor]:
    """:func:`save_selected`'s tensors, checked against ``model``'s trainable parameters."""
    from safetensors.torch import load_file

    from distrec.errors import ModelError

    path = run_dir / SELECTED
    if not path.is_file():
        raise ModelError(f"no selected weights at {path}: was the run trained to the end?")
    saved = load_file(str(path))
    out = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            if name not in saved:
                raise ModelError(f"{path}: has no tensor '{name}' (a different model or adapter configuration)")
            shape = tuple(getattr(p, "ds_shape", p.shape))
            if tuple(saved[name].shape) != shape:
                raise ModelError(f"{path}: '{name}' has shape {tuple(saved[name].shape)}, the model's is {shape}")
            out[name] = saved[name]
    return out
