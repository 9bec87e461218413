"""LoRA through PEFT, behind distrec's :class:`Adapter` interface.

Export under ZeRO-3 gathers the adapter's partitioned tensors on all ranks and writes PEFT's
own format (``adapter_config.json`` + ``adapter_model.safetensors``) on rank 0, so the result
loads with ``PeftModel.from_pretrained`` anywhere. An export with no tensors or all-empty
tensors is refused: that is the field's most common ZeRO-3 bug.
"""

from __future__ import annotations

from pathlib import Path

import torch

from distrec import atomic
from distrec.config import AdapterConfig
from distrec.errors import ModelError
from distrec.model.adapters.base import Adapter, trainable_parameters

#: Files of a PEFT LoRA export.
EXPORT_FILES = ("adapter_config.json", "adapter_model.safetensors")


class LoraAdapter(Adapter):
    kind = "lora"

    def __init__(self, cfg: AdapterConfig) -> None:
        self.cfg = cfg

    def attach(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [m for m in self.cfg.target_modules if m not in names]
        if missing:
            raise ModelError(
                f"adapter.target_modules: {missing} not found in the model "
                f"(linear layer names include e.g. {sorted(n for n in names if 'proj' in n)[:8]})"
            )
        lora = LoraConfig(
            r=self.cfg.r,
            lora_alpha=self.cfg.alpha,
            lora_dropout=self.cfg.dropout,
            target_modules=list(self.cfg.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora)

    def export(self, model, out_dir: Path, gathered, is_rank0: bool) -> Path | None:
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        params = trainable_parameters(model)
        with gathered(params.values()):
            if not is_rank0:
                return None
            state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in get_peft_model_state_dict(model).items()}
        if not state or all(t.numel() == 0 for t in state.values()):
            raise ModelError("adapter export produced no weights (ZeRO-3 parameters were not gathered)")
        with atomic.staged(Path(out_dir), EXPORT_FILES, overwrite=True) as tmp:
            model.peft_config["default"].save_pretrained(str(tmp))
            save_file(state, str(tmp / "adapter_model.safetensors"))
        return Path(out_dir)

    def load(self, model: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_model.safetensors").is_file():
            raise ModelError(f"no adapter_model.safetensors in {adapter_dir}")
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False)
