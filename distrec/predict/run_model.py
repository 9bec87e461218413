"""A trained run's model in one process, built by the same calls as the training workers.

:func:`load_run_model` makes the worker's build
(:func:`~distrec.train.builders.causal_lm.assemble_causal_lm`: backbone, trunk attention when the
run shared prompt prefixes, SPA tokens, adapter, ReLLaX assembly with the run's CRM) without
DeepSpeed and loads the run's selected trainable tensors (``selected_trainable.safetensors``, the
state its test predictions came from), so a prediction and the run's own evaluation share every
line of model code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from distrec.config import JobConfig


@dataclass
class RunModel:
    model: torch.nn.Module  # eval mode, on ``device``
    tokenizer: object
    task: object  # distrec.objectives.tasks.CtrTask or GenerativeTask
    device: torch.device


class OneProcess:
    """The strategy interface the evaluation helpers use, for a single process (rank 0 of 1)."""

    rank, world_size, is_rank0 = 0, 1, True

    @staticmethod
    def all_gather_object(obj) -> list:
        return [obj]

    @staticmethod
    def gather_to_rank0(obj) -> list:
        return [obj]

    @staticmethod
    def broadcast_from_rank0(obj):
        return obj


def load_run_model(job: JobConfig, run: str, crm_dir: str | None, device: torch.device) -> RunModel:
    """The run's model with its selected weights; ``run``: the run's distrec folder (path or URI).

    Raises ModelError when the run has no selected weights or they do not fit the config."""
    from distrec.storage_uri import local_copy, locate
    from distrec.train.builders.causal_lm import assemble_causal_lm
    from distrec.train.checkpoint import SELECTED, load_selected

    torch.manual_seed(job.train.seed)
    built = assemble_causal_lm(job, device, crm_dir)
    model, tokenizer = built.model, built.tokenizer
    with local_copy(locate(run) / SELECTED) as selected:
        tensors = load_selected(model, Path(selected).parent)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(tensors[name])
    model.to(device).eval()
    return RunModel(model, tokenizer, built.task, device)
