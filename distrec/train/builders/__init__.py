"""What the one training loop trains, per ``model.kind``: a builder returns a :class:`Built`.

The loop (:mod:`distrec.train.loop`) is the same for every model; a builder supplies the
module DeepSpeed wraps, the task object (batch -> loss, eval rows -> metrics, selection
metric; :mod:`distrec.objectives`), and what the run exports once the selected state is in
place. ``causal_lm``: the backbone with its adapter, SPA and CFLoRA conditioning
(:mod:`.causal_lm`); ``din``: the DIN CRM (:mod:`.din`); ``eimf``: IBIM + ESIM (:mod:`.eimf`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch


@dataclass
class Built:
    """One rank's model and everything the loop asks of it.

    ``export(run_dir)``: write the run's model outputs; called on every rank (it may gather
    partitioned parameters). ``log_samples(monitor, rows)``: rank 0, before the first step.
    ``test_extras(ctx, rows, prepared_dir) -> metrics``: more test metrics on every rank.
    ``flop_config``: the backbone's config for :mod:`distrec.train.flops` (MFU), or None.
    """

    model: torch.nn.Module
    task: Any
    export: Callable[[Path], None]
    log_samples: Optional[Callable[[Any, Any], None]] = None
    test_extras: Optional[Callable[[Any, Any, Path], dict]] = None
    flop_config: Any = None


def whole_model_export(strategy, folder: Path, write: Callable[[Path], None]) -> None:
    """Export a model every rank holds whole (ZeRO stage 0): rank 0 runs ``write(tmp)`` into a
    staged ``folder`` (:func:`distrec.atomic.staged`), published whole or not at all."""
    if strategy.is_rank0:
        from distrec import atomic

        with atomic.staged(folder, overwrite=True) as tmp:
            write(tmp)


def build(job, strategy, loop_config: dict) -> Built:
    """The :class:`Built` of ``job.model.kind`` on this rank (``strategy``: its DeepSpeed strategy)."""
    if job.model.kind == "din":
        from distrec.train.builders.din import build_din

        return build_din(job, strategy, loop_config)
    if job.model.kind == "eimf":
        from distrec.train.builders.eimf import build_eimf

        return build_eimf(job, strategy, loop_config)
    from distrec.train.builders.causal_lm import build_causal_lm

    return build_causal_lm(job, strategy, loop_config)
