"""Every DeepSpeed specific in one place (OpenRLHF-style strategy object).

The training loop talks only to :class:`DeepSpeedStrategy`: building the DeepSpeed config from
the typed YAML sections, constructing the model under ZeRO-3 partitioned init, engine set-up,
backward/step, checkpoint save/load, gathering partitioned parameters, and the few collectives
the loop needs. Nothing else in distrec imports ``deepspeed``.
"""

from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist

from distrec.config import DeepSpeedConfig, TrainConfig

# Not the id of any submodule. ZeRO-3 keeps a gathered parameter while its set of active
# submodules (``ds_active_sub_modules``) is not empty, and empties every set at the optimiser step.
_HELD_FOR_STEP = -1
# DeepSpeed's default ``stage3_max_live_parameters``.
_DEFAULT_MAX_LIVE = 1_000_000_000


def disable_cpu_shm_allreduce_build() -> None:
    """Skip DeepSpeed's JIT build of a CPU shared-memory allreduce op (45–120 s, 3–5 GB).

    The op is only an optimisation for intra-node CPU allreduce; gloo does the same work.
    The attribute lives on the module object in ``sys.modules`` (``import deepspeed.comm.torch``
    binds the real torch package instead).
    """
    module = sys.modules.get("deepspeed.comm.torch")
    if module is not None and hasattr(module, "build_shm_op"):
        module.build_shm_op = lambda: None


def build_ds_config(ds: DeepSpeedConfig, train: TrainConfig, world_size: int) -> dict[str, Any]:
    """DeepSpeed config dict from the typed sections. ``ds.extra`` is merged last, key by key
    into nested sections (``{zero_optimization: {stage3_max_live_parameters: 1e8}}`` changes
    that one key)."""
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.zero_stage >= 2:
        zero.update(overlap_comm=False, contiguous_gradients=True)
    if ds.zero_stage == 3:
        zero.update(
            stage3_gather_16bit_weights_on_model_save=False,
            stage3_param_persistence_threshold=10_000,
            stage3_prefetch_bucket_size=50_000_000,
        )
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    if ds.offload_param and ds.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": torch.cuda.is_available()}
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    return _merged(config, ds.extra)


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def linear_warmup_decay(optimizer: torch.optim.Optimizer, warmup: int, total: int, decay: bool = True):
    """LR multiplier: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``
    (``decay=False``: constant after the warm-up)."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        if not decay:
            return 1.0
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class DeepSpeedStrategy:
    """Owns the DeepSpeed engine of one rank.

    Usage in a worker::

        s = DeepSpeedStrategy(cfg.deepspeed, cfg.train, use_gpu)
        with s.model_init_context():
            model = build_model(...)
        s.initialize(model, total_steps)
        s.backward(loss); s.step()
    """

    def __init__(self, ds: DeepSpeedConfig, train: TrainConfig, use_gpu: bool) -> None:
        import deepspeed

        disable_cpu_shm_allreduce_build()
        self.ds_cfg = ds
        self.train_cfg = train
        self.use_gpu = use_gpu
        if not dist.is_initialized():  # Ray Train has usually set up the process group already
            deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
        else:
            deepspeed.init_distributed(dist_init_required=False)
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.config = build_ds_config(ds, train, self.world_size)
        self.engine = None
        self._hold_for_step = False
        self.replicated: list[str] = []  # frozen parameters kept whole on every rank (replicate_frozen)
        self.hooked: list[str] = []  # modules that keep ZeRO-3's hooks (prune_idle_hooks)
        self._hf_ds_config = None  # kept alive: transformers reads it through a weak reference

    @property
    def zero3(self) -> bool:
        return self.ds_cfg.zero_stage == 3

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        if self.use_gpu:
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    @contextlib.contextmanager
    def model_init_context(self) -> Iterator[None]:
        """Construct models inside this so ZeRO-3 partitions parameters as they are created."""
        if not self.zero3:
            yield
            return
        import deepspeed
        import torch._dynamo  # noqa: F401  (its first import fails once zero.Init patches tensor constructors)
        from transformers.integrations import HfDeepSpeedConfig

        self._hf_ds_config = HfDeepSpeedConfig(self.config)  # makes from_pretrained use zero.Init
        with deepspeed.zero.Init(config_dict_or_path=self.config):
            yield

    def initialize(self, model: torch.nn.Module, total_steps: int) -> Any:
        """Wrap ``model`` in a DeepSpeed engine with AdamW over its trainable parameters.

        Under ZeRO-3, a model within ``stage3_max_live_parameters`` first has its frozen parameters
        made whole buffers (:meth:`_replicate_frozen`, unless ``deepspeed.replicate_frozen: false``).
        """
        import deepspeed

        numel = sum(self.local_numel(p)[1] for p in model.parameters())
        max_live = self.config.get("zero_optimization", {}).get("stage3_max_live_parameters", _DEFAULT_MAX_LIVE)
        within_budget = self.zero3 and not self.ds_cfg.offload_param and numel <= max_live
        if within_budget and self.ds_cfg.replicate_frozen:
            self.replicated = self._replicate_frozen(model)
        params = [p for p in model.parameters() if p.requires_grad]
        t = self.train_cfg
        if self.use_gpu:
            from deepspeed.ops.adam import FusedAdam

            optimizer = FusedAdam(params, lr=t.lr, weight_decay=t.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
        scheduler = linear_warmup_decay(optimizer, t.warmup_steps, total_steps, decay=t.lr_schedule == "linear")
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self.config
        )
        self._hold_for_step = within_budget and self.ds_cfg.gather_once_per_step
        if self.replicated and self.ds_cfg.prune_idle_hooks:
            self.hooked = self._prune_idle_hooks()
        return self.engine

    def _prune_idle_hooks(self) -> list[str]:
        """Remove ZeRO-3's module hooks from every module that owns no partitioned parameter.

        ZeRO-3 hooks every module four times: before and after its forward (fetch and release
        its own parameters) and, through an identity autograd function on its inputs and
        outputs, before and after its backward. A module that owns no partitioned parameter
        (a norm, an activation, a container such as a decoder layer, and every frozen layer
        once :meth:`_replicate_frozen` has made it a buffer) fetches and releases nothing, yet
        its hooks run in every micro-batch (their cost: the ``lora-all-hooks`` row of
        ``jobs/bench/train_throughput.py``). Kept: the root module, DeepSpeed's leaf modules (they fetch
        their whole subtree) and modules holding external parameters. A parameter a module
        uses without owning is registered by DeepSpeed on the innermost hooked module running
        it, so it is still fetched. Values and gradients are equal up to float rounding, not
        bitwise: without the identity autograd nodes the backward may add a tensor's gradient
        contributions in another order (a 2-rank Ray LoRA run's third-step loss moved by 1e-6).
        Applied only once the frozen base is whole, so every partitioned parameter is a trained
        one. Returns the names of the modules that keep their hooks.
        """
        from deepspeed.utils import z3_leaf_module

        offload = self.engine.optimizer.parameter_offload  # ZeRO-3's hook owner
        root = self.engine.module
        kept, idle = [], set()
        for name, module in root.named_modules():
            owns = any(hasattr(p, "ds_id") for p in module.parameters(recurse=False))
            if module is root or owns or z3_leaf_module(module) or getattr(module, "_external_params", None):
                kept.append(name)
            else:
                idle |= {id(module._forward_pre_hooks), id(module._forward_hooks)}

        def live(handles: list) -> list:
            out = []
            for handle in handles:
                hooks = handle.hooks_dict_ref()
                if hooks is not None and id(hooks) in idle:
                    handle.remove()
                else:
                    out.append(handle)
            return out

        offload.forward_hooks = live(offload.forward_hooks)
        offload.backward_hooks = live(offload.backward_hooks)
        return kept

    def _replicate_frozen(self, model: torch.nn.Module) -> list[str]:
        """Gather every frozen ZeRO-3 parameter once and keep it whole on every rank, as a buffer.

        A frozen parameter (the base model under LoRA or CFLoRA) never changes, yet ZeRO-3
        all-gathers it in every forward and backward and, with :meth:`accumulation_window`, still
        once per optimiser step. Turned into a non-persistent buffer (``module.weight`` still
        finds it; ``state_dict`` and checkpoints leave it out, as ``exclude_frozen_parameters``
        did), it is gathered once per run and ZeRO-3 partitions only what is trained. Values and
        gradients are unchanged. Memory: the frozen part of the model whole on every rank,
        allowed only under the same budget as :meth:`accumulation_window`. Tied parameters (an LM
        head sharing the input embedding) stay one tensor. Returns the replicated names.
        """
        import deepspeed

        params = list(model.parameters())  # a tied parameter once
        partitioned = [p for p in params if hasattr(p, "ds_id")]
        if not partitioned or all(p.requires_grad for p in params):
            return []
        # What deepspeed.initialize does to parameters made outside zero.Init (adapters), done first:
        # once no frozen one is left it would take the model for an unpartitioned one and cast it.
        if loose := [p for p in params if not hasattr(p, "ds_id")]:
            partitioned[0].convert_to_zero_parameters(param_list=loose)
        whole: dict[int, torch.Tensor] = {}
        for p in params:
            if not p.requires_grad:
                with deepspeed.zero.GatheredParameters([p]):  # one at a time: at most one extra copy
                    whole[id(p)] = p.data.detach().clone()
        names = []
        for module_name, module in model.named_modules(remove_duplicate=False):
            for name, p in list(module._parameters.items()):
                if p is not None and id(p) in whole:
                    del module._parameters[name]
                    module.register_buffer(name, whole[id(p)], persistent=False)
                    names.append(f"{module_name}.{name}" if module_name else name)
        return names

    @contextlib.contextmanager
    def accumulation_window(self) -> Iterator[None]:
        """The micro-batches of one optimiser step: under ZeRO-3, gather each parameter once.

        A parameter cannot change between an optimiser step's micro-batches, yet ZeRO-3 releases
        it after each micro-batch's backward and all-gathers it again in the next forward. Inside
        this window a gathered parameter stays gathered until the optimiser step (inside the
        window) partitions every parameter again, so ``grad_accum`` micro-batches cost one
        all-gather of the model instead of ``grad_accum``. Values and gradients are unchanged.

        Memory: at most the whole model is gathered at once, which the window allows only when
        the model has no more elements than ``stage3_max_live_parameters`` (DeepSpeed's bound on
        gathered elements, 1e9 unless set in ``deepspeed.extra``). With DeepSpeed's default
        ``stage3_max_reuse_distance`` (1e9) a model of up to 5e8 elements is whole at the end
        of every forward anyway, so no more is gathered at once than before. No-op below ZeRO-3, with
        ``deepspeed.offload_param`` or with ``deepspeed.gather_once_per_step: false``.
        """
        if not self._hold_for_step:
            yield
            return
        params = list(self.engine.module.parameters())
        for p in params:
            p.ds_active_sub_modules.add(_HELD_FOR_STEP)
        try:
            yield
        finally:
            for p in params:
                p.ds_active_sub_modules.discard(_HELD_FOR_STEP)

    # --- one optimiser step -------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> None:
        self.engine.step()

    @property
    def accumulation_scale(self) -> float:
        """Factor DeepSpeed divides a micro-batch loss by before averaging over ranks.

        ``engine.backward`` scales by 1/grad_accum and the gradient allreduce averages over
        ranks; multiplying a loss *sum* by this and dividing by the global token count makes
        the step's gradient exactly ``∑ loss / global tokens`` (see objectives.tasks).
        """
        return float(self.train_cfg.grad_accum * self.world_size)

    def grad_norm(self) -> float:
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            return float("nan")
        return float(norm.item() if torch.is_tensor(norm) else norm)

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    # --- parameters -----------------------------------------------------------------------
    @contextlib.contextmanager
    def gathered(self, params: Iterable[torch.nn.Parameter], modifier_rank: int | None = None) -> Iterator[None]:
        """Make full copies of partitioned parameters visible on every rank (no-op below ZeRO-3).

        With ``modifier_rank=r``, rank r's in-place changes are broadcast and re-partitioned on exit.
        """
        params = list(params)
        if not self.zero3:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
            yield

    @staticmethod
    def local_numel(param: torch.nn.Parameter) -> tuple[int, int]:
        """(elements held by this rank, full size) of a possibly partitioned parameter."""
        if hasattr(param, "ds_tensor"):
            return param.ds_tensor.numel(), param.ds_numel
        return param.numel(), param.numel()

    # --- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self, directory: str, tag: str) -> None:
        """Every rank writes its own shard (model, optimizer and scheduler state) under ``directory/tag``."""
        self.engine.save_checkpoint(directory, tag=tag, exclude_frozen_parameters=True)

    def load_checkpoint(self, directory: str, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=tag, load_module_strict=False)
        if path is None:
            from distrec.errors import ModelError

            raise ModelError(f"checkpoint {directory}/{tag} could not be loaded")

    # --- collectives ----------------------------------------------------------------------
    def all_reduce_sums(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over all ranks, in one collective (float64; every rank passes the same keys)."""
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return dict(zip(keys, t.tolist()))

    def all_gather_object(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_to_rank0(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None on the other ranks."""
        out: list[Any] | None = [None] * self.world_size if self.is_rank0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast_from_rank0(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (the others pass None)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        dist.barrier()


def steps_per_epoch(rows: int, world_size: int, micro_batch: int, grad_accum: int) -> int:
    """Optimiser steps in one epoch when every rank takes the same number of full steps."""
    return math.floor(rows / (world_size * micro_batch * grad_accum))
