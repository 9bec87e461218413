"""Fallback for jobs/gpu/oneshot.sh when DeepSpeed's FusedAdam cannot be JIT-built on the lent machine.

distrec's GPU strategy builds ``deepspeed.ops.adam.FusedAdam``; that op is compiled on first use
(the pack's DeepSpeed is built with ``DS_BUILD_OPS=0``). If that build fails there (no Python
headers, nvcc/torch mismatch), oneshot.sh puts this folder first on PYTHONPATH for the train
stages, so every process (driver and Ray workers) imports this ``sitecustomize``: it makes
``deepspeed.ops.adam.FusedAdam`` plain ``torch.optim.AdamW`` (the client optimiser distrec uses
on CPU), and the rest of the path (Ray Train, ZeRO-3, NCCL, bf16) is still measured. The report
marks those stages as run with the fallback. Any other ``sitecustomize`` on sys.path still runs.
"""

import importlib.abc
import importlib.util
import os
import sys

_TARGET = "deepspeed.ops.adam"


def _fallback_class():
    import torch

    class FusedAdam(torch.optim.AdamW):
        """torch.optim.AdamW under FusedAdam's name and signature (the fused options are ignored)."""

        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                     **_fused_only):  # bias_correction, adam_w_mode, set_grad_none: AdamW's behaviour
            super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    return FusedAdam


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, *_path_and_target):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            module.FusedAdam = _fallback_class()

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _PatchAfterImport())

_here = os.path.dirname(os.path.abspath(__file__))
for _entry in list(sys.path):
    _candidate = os.path.join(_entry or ".", "sitecustomize.py")
    if os.path.abspath(_entry or ".") != _here and os.path.isfile(_candidate):
        _spec = importlib.util.spec_from_file_location("_chained_sitecustomize", _candidate)
        _module = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(_module)
        break
