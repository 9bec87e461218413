"""CFLoRA (ReLLaX §3.7): LoRA whose rank components interact through a per-instance r×r matrix.

Each adapted linear computes::

    y = W0 x + s · B · G_u · A · dropout(x)          s = alpha / r

with ``A ∈ R^{r×d_in}`` (Kaiming-uniform, as LoRA), ``B ∈ R^{d_out×r}`` (zeros) and ``G_u``
one r×r matrix per instance (batch row). ``G_u`` comes from ``mode``:

- ``"generated"`` (the authors' code): a per-(layer, module) network of the instance
  representation ``h_u`` (the CRM's final hidden vector, detached)::

      G_code = reshape_{r×r}( W2 · GELU( W1 · LayerNorm(h_u) + b1 ) + b2 )

  The authors apply it to row vectors, ``bmm(A x, G_code)``; this module does exactly that,
  so in the column convention above ``G_u = G_codeᵀ`` (a relabelling of W2's rows).
- ``"static"``: one learned r×r matrix shared by all instances (``g_init`` "kaiming" or
  "identity").
- ``"identity"``: ``G ≡ I`` -- plain LoRA. ``"zero"``: ``G ≡ 0`` -- the base model.
- ``"fixed"``: a caller-supplied matrix, ``[r, r]`` or per instance ``[B, r, r]``, passed with
  ``adapter.instance(g=...)`` (or a layer's ``g_fixed`` buffer); for tests and ablations
  (MoE-LoRA is ``blockdiag(g_1 I, …, g_N I)``, the RecLoRA mixture ``(w wᵀ) ⊗ I``).

**How the instance representation reaches the layers.** The HF model's forward signature is
untouched and there is no global state: the adapter owns an :class:`InstanceContext`, a plain
holder object that every :class:`CFLoraLinear` it creates references. Wrap the model call in
``with adapter.instance(h_u): loss = model(...).loss; engine.backward(loss)``: the context
sets ``h_u`` on the holder, the layers read it during forward and clear it on exit. Under
gradient checkpointing (and ZeRO-3's recomputation) the forward of a layer is re-run during
*backward*, so the backward call must stay inside the ``with`` block; a generated-mode layer
that runs with no instance set raises :class:`~distrec.errors.ModelError`.

**ZeRO-3.** ``A``/``B`` are ``nn.Linear`` submodules and ``G``'s parameters live in their own
submodules that are *called* in forward, so DeepSpeed's per-module hooks gather them; attach
the adapter (and :meth:`CFLoraAdapter.load_lora_ab`) before ``deepspeed.initialize``, as with
PEFT. :meth:`CFLoraAdapter.export` gathers every adapter tensor on every rank.
:meth:`CFLoraAdapter.merge` and :meth:`CFLoraLinear.delta_weight` need whole (unpartitioned)
tensors.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from distrec import atomic
from distrec.config import AdapterConfig
from distrec.errors import ModelError
from distrec.model.adapters.base import Adapter

PEFT_TYPE = "CFLORA"
MODES = ("generated", "static", "identity", "zero", "fixed")
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"


def generator_parameter_count(d_h: int, r: int) -> int:
    """Parameters of one G-generator (§3.7): LayerNorm + W1, b1 + W2, b2."""
    return 2 * d_h + d_h * 2 * r * r + 2 * r * r + 2 * r * r * r * r + r * r


# --------------------------------------------------------------------------- instance


class InstanceContext:
    """Holder of the current instance representation, shared by one adapter's layers.

    Not a module and not global: each :class:`CFLoraAdapter` owns one and hands it to the
    layers it creates. ``h`` is ``[B, d_instance]`` (detached); ``g`` an explicit interaction
    matrix for ``mode="fixed"`` layers.
    """

    def __init__(self, d_instance: int | None = None, r: int | None = None) -> None:
        self.d_instance = d_instance
        self.r = r
        self.h: torch.Tensor | None = None
        self.g: torch.Tensor | None = None

    @contextlib.contextmanager
    def __call__(
        self, h_u: torch.Tensor | None = None, *, g: torch.Tensor | None = None
    ) -> Iterator[InstanceContext]:
        """Set ``h_u`` (and/or ``g``) for the model calls -- forward *and* backward -- inside."""
        if h_u is not None:
            if h_u.dim() != 2:
                raise ModelError(f"CFLoRA instance representation must be [batch, d], got {tuple(h_u.shape)}")
            if self.d_instance is not None and h_u.shape[1] != self.d_instance:
                raise ModelError(
                    f"CFLoRA instance representation has width {h_u.shape[1]}, but "
                    f"cflora.d_instance={self.d_instance} (it must equal the CRM hidden size)"
                )
            h_u = h_u.detach()
        if g is not None and (
            g.dim() not in (2, 3) or (self.r is not None and tuple(g.shape[-2:]) != (self.r, self.r))
        ):
            raise ModelError(f"CFLoRA interaction matrix must be [r, r] or [batch, r, r] with r={self.r}, got {tuple(g.shape)}")
        previous = (self.h, self.g)
        self.h, self.g = h_u, g
        try:
            yield self
        finally:
            self.h, self.g = previous


# ----------------------------------------------------------------------------- layers


class InteractionGenerator(nn.Module):
    """``h_u [B, d_h] -> G_code [B, r, r]``: LayerNorm, Linear(d_h, 2r²), GELU, Linear(2r², r²)."""

    def __init__(self, d_h: int, r: int) -> None:
        super().__init__()
        self.r = r
        self.norm = nn.LayerNorm(d_h)
        self.fc1 = nn.Linear(d_h, 2 * r * r)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * r * r, r * r)
        for lin in (self.fc1, self.fc2):
            nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5))
            nn.init.zeros_(lin.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(h)))).view(h.shape[0], self.r, self.r)


class StaticInteraction(nn.Module):
    """One learned r×r matrix; a module (called in forward) so that ZeRO-3 gathers it."""

    def __init__(self, r: int, init: str = "kaiming") -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(r, r))
        if init == "identity":
            with torch.no_grad():
                self.weight.copy_(torch.eye(r))
        else:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self) -> torch.Tensor:
        return self.weight


class CFLoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus the CFLoRA update ``s · B · G_u · A · dropout(x)``."""

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        alpha: float = 16,
        dropout: float = 0.0,
        mode: str = "generated",
        d_instance: int = 256,
        *,
        g_init: str = "kaiming",
        freeze_ab: bool = False,
        context: InstanceContext | None = None,
        g_fixed: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ModelError(f"CFLoRA wraps nn.Linear layers, got {type(base).__name__}")
        if mode not in MODES:
            raise ModelError(f"CFLoRA mode must be one of {MODES}, got {mode!r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.mode, self.d_instance = r, mode, d_instance
        self.scaling = alpha / r
        self.in_features, self.out_features = base.in_features, base.out_features
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        if mode == "generated":
            self.gate = InteractionGenerator(d_instance, r)
        elif mode == "static":
            self.gate = StaticInteraction(r, g_init)
        if mode == "fixed" and g_fixed is not None:
            self.register_buffer("g_fixed", g_fixed.detach().clone().float())
        else:
            self.g_fixed = None
        # Plain attribute (not a submodule): shared with the other layers of the adapter.
        self.context = context if context is not None else InstanceContext(d_instance, r)
        # Adapter tensors in fp32 over a half-precision base, as PEFT does; input is cast.
        w = base.weight
        dtype = torch.float32 if w.dtype in (torch.float16, torch.bfloat16) else w.dtype
        for name, m in self.named_children():
            if name != "base":
                m.to(device=w.device, dtype=dtype)
        self.freeze_ab = False
        self.set_freeze_ab(freeze_ab)

    # -- set-up ------------------------------------------------------------------------------
    def set_freeze_ab(self, freeze: bool) -> None:
        self.freeze_ab = bool(freeze)
        self._b_checked = False
        for p in (self.lora_A.weight, self.lora_B.weight):
            p.requires_grad_(not freeze)

    def check_frozen_b(self, where: str = "") -> None:
        """Refuse a frozen, all-zero B: CFLoRA would then add exactly 0 forever (§3.10 item 1)."""
        w = self.lora_B.weight
        if not self.freeze_ab or w.numel() == 0:  # numel 0: partitioned by ZeRO-3, checked at attach
            return
        if not bool(torch.any(w != 0)):
            raise ModelError(
                f"CFLoRA{' ' + where if where else ''}: B is frozen (freeze_ab=True) but all zeros, so the "
                "adapter would add exactly 0; load A and B from a trained LoRA stage "
                "(cflora.lora_init_dir) or set freeze_ab=False"
            )
        self._b_checked = True

    def adapter_modules(self) -> list[nn.Module]:
        return [m for n, m in self.named_children() if n not in ("base", "lora_dropout")]

    # -- interaction -------------------------------------------------------------------------
    def interaction(self, batch: int) -> torch.Tensor | None:
        """``G_u`` per instance, ``[batch, r, r]``, column convention ``ΔW_u = s·B·G_u·A``.

        None for ``mode="identity"`` (G ≡ I). Reads the adapter's :class:`InstanceContext`.
        """
        r, ctx = self.r, self.context
        if self.mode == "identity":
            return None
        dtype, device = self.lora_A.weight.dtype, self.lora_A.weight.device
        if self.mode == "zero":
            return torch.zeros(batch, r, r, dtype=dtype, device=device)
        if self.mode == "generated":
            h = ctx.h
            if h is None:
                raise ModelError(
                    "CFLoRA (mode 'generated') ran without an instance representation: wrap the "
                    "forward *and* backward in `with adapter.instance(h_u):` (gradient "
                    "checkpointing re-runs the forward during backward)"
                )
            if h.shape[0] != batch:
                raise ModelError(f"CFLoRA: instance representation has {h.shape[0]} rows but the batch has {batch}")
            param = self.gate.fc1.weight
            g_code = self.gate(h.to(device=device, dtype=param.dtype))
            return g_code.transpose(1, 2)
        if self.mode == "static":
            return self.gate().unsqueeze(0).expand(batch, r, r)
        # fixed
        g = ctx.g if ctx.g is not None else self.g_fixed
        if g is None:
            raise ModelError("CFLoRA (mode 'fixed') needs a matrix: `with adapter.instance(g=G):` or g_fixed")
        g = g.to(device=device, dtype=dtype)
        if g.dim() == 2:
            return g.unsqueeze(0).expand(batch, r, r)
        if g.shape[0] != batch:
            raise ModelError(f"CFLoRA: {g.shape[0]} interaction matrices for a batch of {batch}")
        return g

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base(x, *args, **kwargs)
        if self.mode == "zero":
            return result
        if self.freeze_ab and not self._b_checked:
            self.check_frozen_b()
        z = self.lora_A(self.lora_dropout(x.to(self.lora_A.weight.dtype)))
        if self.mode != "identity":
            batch = z.shape[0]
            g = self.interaction(batch)
            # Row vectors: z·G_uᵀ = (G_u z)ᵀ; for "generated" that is the authors' bmm(Ax, G_code).
            z = torch.bmm(z.reshape(batch, -1, self.r), g.transpose(1, 2).to(z.dtype)).reshape(z.shape)
        return result + (self.lora_B(z) * self.scaling).to(result.dtype)

    @torch.no_grad()
    def delta_weight(self, batch: int = 1) -> torch.Tensor:
        """``ΔW_u = s·B·G_u·A`` per instance, ``[batch, d_out, d_in]`` (needs whole tensors)."""
        a, b = self.lora_A.weight, self.lora_B.weight
        g = self.interaction(batch)
        if g is None:
            g = torch.eye(self.r, dtype=a.dtype, device=a.device).expand(batch, self.r, self.r)
        return self.scaling * (b @ g.to(a.dtype) @ a)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, mode={self.mode}, freeze_ab={self.freeze_ab}"


# ---------------------------------------------------------------------------- adapter


def _unwrap(model: nn.Module) -> nn.Module:
    """A DeepSpeed engine / DDP wrapper -> the model inside."""
    while not isinstance(model, CFLoraLinear) and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def cflora_layers(model: nn.Module) -> dict[str, CFLoraLinear]:
    """``{module path: layer}`` of every CFLoRA layer in ``model``."""
    return {n: m for n, m in _unwrap(model).named_modules() if isinstance(m, CFLoraLinear)}


def find_instance_context(model: nn.Module) -> InstanceContext:
    """The :class:`InstanceContext` the CFLoRA layers of ``model`` read (one per adapter)."""
    contexts = {id(m.context): m.context for m in cflora_layers(model).values()}
    if len(contexts) != 1:
        raise ModelError(f"expected the CFLoRA layers of one adapter, found {len(contexts)} instance contexts")
    return next(iter(contexts.values()))


def adapter_tensors(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, torch.Tensor]]:
    """CFLoRA parameters (trainable or frozen A/B) and buffers, base weights excluded."""
    params: dict[str, nn.Parameter] = {}
    buffers: dict[str, torch.Tensor] = {}
    for path, layer in cflora_layers(model).items():
        for n, p in layer.named_parameters():
            if not n.startswith("base."):
                params[f"{path}.{n}"] = p
        for n, b in layer.named_buffers():
            if not n.startswith("base.") and b is not None:
                buffers[f"{path}.{n}"] = b
    return params, buffers


class CFLoraAdapter(Adapter):
    """CFLoRA behind distrec's :class:`Adapter` interface (attach / export / load)."""

    kind = "cflora"

    def __init__(self, cfg: AdapterConfig, d_instance: int = 256) -> None:
        """``cfg``: the job's ``adapter`` section (``cfg.cflora``: mode, G init, two-stage
        options); ``d_instance``: the width of h_u, the CRM's hidden size."""
        self.cfg, self.d_instance = cfg, d_instance
        self.context = InstanceContext(d_instance, cfg.r)

    def instance(self, h_u: torch.Tensor | None = None, *, g: torch.Tensor | None = None):
        """Context manager: the instance representation ``h_u [B, d_instance]`` (or, for mode
        "fixed", ``g``) that this adapter's layers use. Keep ``backward`` inside it."""
        return self.context(h_u, g=g)

    # -- attach ------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> nn.Module:
        cfg = self.cfg
        inner = _unwrap(model)
        if cflora_layers(inner):
            raise ModelError("the model already has CFLoRA layers attached")
        targets = [(n, m) for n, m in inner.named_modules() if n and n.rsplit(".", 1)[-1] in cfg.target_modules]
        found = {n.rsplit(".", 1)[-1] for n, _ in targets}
        missing = [t for t in cfg.target_modules if t not in found]
        if missing:
            names = {n.rsplit(".", 1)[-1] for n, _ in inner.named_modules()}
            raise ModelError(
                f"cflora.target_modules: {missing} not found in the model "
                f"(linear layer names include e.g. {sorted(n for n in names if 'proj' in n)[:8]})"
            )
        bad = [n for n, m in targets if not isinstance(m, nn.Linear)]
        if bad:
            raise ModelError(f"cflora.target_modules must name nn.Linear layers; not linear: {bad[:4]}")
        for p in inner.parameters():
            p.requires_grad_(False)
        for name, base in targets:
            parent_name, _, child = name.rpartition(".")
            parent = inner.get_submodule(parent_name) if parent_name else inner
            layer = CFLoraLinear(
                base, cfg.r, cfg.alpha, cfg.dropout, cfg.cflora.mode, self.d_instance,
                g_init=cfg.cflora.g_init, context=self.context,
            )
            setattr(parent, child, layer)
        if cfg.cflora.lora_init_dir:
            self.load_lora_ab(inner, cfg.cflora.lora_init_dir)
        if cfg.cflora.freeze_ab:
            for path, layer in cflora_layers(inner).items():
                layer.set_freeze_ab(True)
                layer.check_frozen_b(f"layer {path}")
        return model

    def load_lora_ab(self, model: nn.Module, peft_adapter_dir, strict: bool = True) -> nn.Module:
        """Initialise every layer's A and B from a PEFT LoRA export (two-stage regime).

        The LoRA stage must have the same r and alpha (the scaling s must carry over).
        ``strict``: refuse LoRA tensors for modules CFLoRA does not adapt (their update would be
        silently dropped). Call before ``deepspeed.initialize``.
        """
        from safetensors.torch import load_file

        folder = Path(peft_adapter_dir)
        cfg_file, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        if not cfg_file.is_file() or not weights.is_file():
            raise ModelError(f"cflora.lora_init_dir: {folder} needs {CONFIG_NAME} and {WEIGHTS_NAME} (a PEFT LoRA export)")
        lora_cfg = json.loads(cfg_file.read_text())
        if str(lora_cfg.get("peft_type", "LORA")).upper() != "LORA":
            raise ModelError(f"{cfg_file}: peft_type {lora_cfg.get('peft_type')!r}, expected LORA")
        if int(lora_cfg.get("r", -1)) != self.cfg.r or float(lora_cfg.get("lora_alpha", -1)) != float(self.cfg.alpha):
            raise ModelError(
                f"{cfg_file}: LoRA r={lora_cfg.get('r')}, lora_alpha={lora_cfg.get('lora_alpha')} but "
                f"CFLoRA r={self.cfg.r}, alpha={self.cfg.alpha}; they must match"
            )
        if lora_cfg.get("use_rslora") or lora_cfg.get("use_dora"):
            raise ModelError(f"{cfg_file}: rsLoRA / DoRA exports are not supported as CFLoRA initialisation")
        state = load_file(str(weights))
        norm = {}
        for key, t in state.items():
            k = key.removeprefix("base_model.model.")
            norm[k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")] = t
        used, problems = set(), []
        layers = cflora_layers(model)
        for path, layer in layers.items():
            for part in ("lora_A", "lora_B"):
                key = f"{path}.{part}.weight"
                target = getattr(layer, part).weight
                if key not in norm:
                    problems.append(f"missing {key}")
                    continue
                if tuple(norm[key].shape) != tuple(target.shape):
                    problems.append(f"{key}: shape {tuple(norm[key].shape)} != {tuple(target.shape)}")
                    continue
                with torch.no_grad():
                    target.copy_(norm[key].to(device=target.device, dtype=target.dtype))
                used.add(key)
        extra = sorted(set(norm) - used)
        if strict and extra:
            problems.append(f"LoRA tensors for modules CFLoRA does not adapt: {extra[:4]}")
        if problems:
            raise ModelError(f"{weights}: cannot initialise CFLoRA A/B: " + "; ".join(problems[:6]))
        for path, layer in layers.items():
            layer.check_frozen_b(f"layer {path} (from {folder})")
        return model

    # -- export / load -----------------------------------------------------------------------
    def export(self, model: nn.Module, out_dir: Path, gathered, is_rank0: bool) -> Path | None:
        from safetensors.torch import save_file

        params, buffers = adapter_tensors(model)
        if not params and not buffers:  # same answer on every rank: no collective is skipped
            raise ModelError("CFLoRA export: the model has no CFLoRA layers (attach the adapter first)")
        with gathered(list(params.values())):
            if not is_rank0:
                return None
            state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in {**params, **buffers}.items()}
        if not state or any(t.numel() == 0 for t in state.values()):
            empty = [k for k, t in state.items() if t.numel() == 0][:4]
            raise ModelError(f"CFLoRA export produced empty tensors {empty} (ZeRO-3 parameters were not gathered)")
        with atomic.staged(Path(out_dir), (CONFIG_NAME, WEIGHTS_NAME), overwrite=True) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(self.peft_style_config(), indent=2))
            save_file(state, str(tmp / WEIGHTS_NAME))
        return Path(out_dir)

    def peft_style_config(self) -> dict:
        c = self.cfg
        return {
            "peft_type": PEFT_TYPE,
            "r": c.r,
            "lora_alpha": c.alpha,
            "lora_dropout": c.dropout,
            "target_modules": list(c.target_modules),
            "mode": c.cflora.mode,
            "d_instance": self.d_instance,
            "g_init": c.cflora.g_init,
            "freeze_ab": c.cflora.freeze_ab,
            "bias": "none",
            "task_type": "CAUSAL_LM",
            "format_version": 1,
        }

    @staticmethod
    def read_config(adapter_dir) -> tuple[AdapterConfig, int]:
        """``(adapter section, d_instance)`` an export was trained with; ModelError names the
        file when it is missing, of another kind, or holds a value the config does not accept."""
        from distrec import config_loader
        from distrec.errors import ConfigError

        file = Path(adapter_dir) / CONFIG_NAME
        if not file.is_file():
            raise ModelError(f"no {CONFIG_NAME} in {adapter_dir}")
        raw = json.loads(file.read_text())
        if raw.get("peft_type") != PEFT_TYPE:
            raise ModelError(f"{file}: peft_type {raw.get('peft_type')!r}, expected {PEFT_TYPE!r}")
        section = {"kind": "cflora", "r": raw.get("r"), "alpha": raw.get("lora_alpha"), "dropout": raw.get("lora_dropout"),
                   "target_modules": raw.get("target_modules"),
                   "cflora": {k: raw[k] for k in ("mode", "g_init", "freeze_ab") if k in raw}}
        try:
            cfg = config_loader.from_dict(AdapterConfig, section, where=str(file))
        except ConfigError as err:
            raise ModelError(str(err)) from None
        d_instance = raw.get("d_instance")
        if not isinstance(d_instance, int) or d_instance <= 0:
            raise ModelError(f"{file}: d_instance must be a positive integer, got {d_instance!r}")
        return cfg, d_instance

    def load(self, model: nn.Module, adapter_dir: Path, trainable: bool = False) -> nn.Module:
        """Attach the CFLoRA export in ``adapter_dir`` (its own config wins) to a fresh backbone.

        Everything is frozen unless ``trainable``. Call before ``deepspeed.initialize``.
        """
        from safetensors.torch import load_file

        weights = Path(adapter_dir) / WEIGHTS_NAME
        if not weights.is_file():
            raise ModelError(f"no {WEIGHTS_NAME} in {adapter_dir}")
        saved, d_instance = self.read_config(adapter_dir)
        self.cfg = replace(saved, cflora=replace(saved.cflora, freeze_ab=False))
        self.d_instance = self.context.d_instance = d_instance
        self.context.r = saved.r
        self.attach(model)
        self.cfg = saved
        state = load_file(str(weights))
        params, buffers = adapter_tensors(model)
        expected = {**params, **buffers}
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ModelError(f"{weights}: missing tensors {missing[:4]}, unexpected tensors {unexpected[:4]}")
        for key, target in expected.items():
            if tuple(state[key].shape) != tuple(target.shape):
                raise ModelError(f"{weights}: {key} has shape {tuple(state[key].shape)}, expected {tuple(target.shape)}")
            with torch.no_grad():
                target.copy_(state[key].to(device=target.device, dtype=target.dtype))
        for path, layer in cflora_layers(model).items():
            layer.set_freeze_ab(saved.cflora.freeze_ab)
            layer.check_frozen_b(f"layer {path} ({adapter_dir})")
            if not trainable:
                for p in layer.adapter_modules():
                    p.requires_grad_(False)
        return model

    # -- merge -------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, model: nn.Module) -> nn.Module:
        """Fold ``ΔW = s·B·G·A`` into W0 and put the plain linears back (G instance-independent).

        Refused for mode "generated" (ΔW depends on the instance) and for per-instance fixed G.
        Needs whole tensors: not under ZeRO-3 partitioning.
        """
        inner = _unwrap(model)
        for path, layer in cflora_layers(inner).items():
            if layer.mode == "generated":
                raise ModelError("CFLoRA merge: mode 'generated' has one ΔW per instance; it cannot be merged")
            if layer.mode == "fixed" and layer.context.g is not None and layer.context.g.dim() == 3:
                raise ModelError("CFLoRA merge: a per-instance fixed G cannot be merged")
            base = layer.base
            if hasattr(base.weight, "ds_id"):
                raise ModelError("CFLoRA merge needs whole weights: not under ZeRO-3 partitioning")
            delta = layer.delta_weight(1)[0]
            base.weight.add_(delta.to(base.weight.dtype))
            parent_name, _, child = path.rpartition(".")
            setattr(inner.get_submodule(parent_name) if parent_name else inner, child, base)
        return model
