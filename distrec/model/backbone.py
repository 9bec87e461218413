"""Backbone causal LMs: from an HF id or folder, from the offline SmolLM2 GGUF, or tiny for tests.

Loading is split in two so that ZeRO-3 can partition at construction time:
:func:`resolve_model_dir` turns ``ModelConfig.name_or_path`` into a local HF folder (once, cached
under ``$DISTREC_HOME/models``), and :func:`build_model` instantiates it. The caller decides the
construction context: ``train.strategy`` registers HF's DeepSpeed config before calling
``build_model``, so ``from_pretrained`` runs inside ``deepspeed.zero.Init`` and no rank holds the
whole model in host memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
)

from distrec import atomic
from distrec.config import ModelConfig
from distrec.errors import ModelError
from distrec.paths import models_dir

SMOLLM2 = "smollm2-135m"

#: Files a usable model folder holds (weights may be sharded).
MODEL_FILES = ("config.json", "model*.safetensors", "tokenizer_config.json")

#: Defaults for ``model.name_or_path: tiny`` (a 2-layer Llama); ``model.tiny`` overrides them.
TINY_DEFAULTS = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
    initializer_range=0.2,  # large enough that a frozen tied head can still express confident logits
)


def resolve_model_dir(cfg: ModelConfig) -> Path:
    """Local folder with config, weights and tokenizer for ``cfg``.

    ``smollm2-135m`` and ``*.gguf`` paths are dequantised once into a safetensors folder;
    ``tiny`` is written once as a seeded random checkpoint, so it loads like any real model.
    HF ids are returned as given (as a Path-like str) and resolved by transformers itself.
    """
    name = cfg.name_or_path
    if name == "tiny":
        return materialize_tiny(cfg)
    if name == SMOLLM2:
        from distrec.data.fetch import fetch

        return convert_gguf(fetch("smollm2"))
    path = Path(name).expanduser()
    if path.suffix == ".gguf" or cfg.gguf_file:
        gguf = path / cfg.gguf_file if cfg.gguf_file else path
        if not gguf.is_file():
            raise ModelError(f"model.name_or_path: GGUF file not found: {gguf}")
        return convert_gguf(gguf)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model.name_or_path: {path} exists but has no config.json")
        return path
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise ModelError(f"model.name_or_path: local model folder does not exist: {name}")
    return Path(name)  # an HF hub id; transformers resolves (and, online, downloads) it


def convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file once into ``$DISTREC_HOME/models/<stem>-<hash>`` and return it.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the state dict is copied
    into a freshly built model of the same config and saved as safetensors (with the tokenizer).
    The folder appears atomically: a crash mid-conversion leaves no folder that looks complete.
    """
    digest = hashlib.sha256(f"{gguf.resolve()}:{gguf.stat().st_size}".encode()).hexdigest()[:10]
    target = models_dir() / f"{gguf.stem}-{digest}-v2"  # v2: saved without GGUF quantization_config

    def write(tmp: Path) -> None:
        # The fresh model's random init (overwritten below) must not draw from the caller's RNG: a
        # worker that converts would otherwise initialise its adapter unlike one that found the folder.
        with torch.random.fork_rng(devices=[]):
            loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            config = loaded.config
            for leftover in ("quantization_config", "_model_name_or_path"):  # GGUF loading leaves these
                if hasattr(config, leftover):
                    delattr(config, leftover)
            fresh = type(loaded)(config)
            fresh.load_state_dict(loaded.state_dict())
        save_checkpoint(fresh, tmp)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(tmp)

    return atomic.ensure_folder(target, write, MODEL_FILES, f"converted model of {gguf}")


def materialize_tiny(cfg: ModelConfig) -> Path:
    """A seeded random 2-layer Llama saved once under ``$DISTREC_HOME/models/tiny-<hash>``.

    It borrows SmolLM2's tokenizer (real BPE, ChatML, single-token " Yes"/" No"), and is built
    outside any ZeRO context so its initialisation is the ordinary HF one; loading it goes
    through ``from_pretrained`` exactly like a real backbone (partitioned init included).
    """
    kwargs = {**TINY_DEFAULTS, **cfg.tiny}
    digest = hashlib.sha256(repr(sorted(kwargs.items())).encode()).hexdigest()[:10]
    target = models_dir() / f"tiny-{digest}"

    def save(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(ModelConfig(name_or_path=SMOLLM2)))
        spec = json.dumps({"vocab_size": len(tokenizer), **kwargs})
        # A fresh interpreter: the weights must not depend on the caller's state (an active
        # DeepSpeed/HF ZeRO-3 config, a changed default dtype), or two homes get two models.
        code = "import sys; from distrec.model.backbone import write_tiny; write_tiny(sys.argv[1], sys.argv[2])"
        done = subprocess.run([sys.executable, "-c", code, spec, str(tmp)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ModelError(f"building the tiny model failed: {done.stderr.strip()[-1500:]}")
        tokenizer.save_pretrained(tmp)

    return atomic.ensure_folder(target, save, MODEL_FILES, "tiny model")


def write_tiny(spec: str, folder: str) -> None:
    """Build the seeded tiny Llama of ``spec`` (JSON LlamaConfig fields) and save it to ``folder``."""
    config = LlamaConfig(tie_word_embeddings=True, **json.loads(spec))
    torch.manual_seed(0)
    save_checkpoint(LlamaForCausalLM(config), Path(folder))


def save_checkpoint(model, folder: Path) -> None:
    """Write ``model``'s config, generation config and weights (one safetensors file) to ``folder``.

    Unlike ``save_pretrained``, this writes on every process: transformers skips the files on
    ranks other than 0 whenever ``torch.distributed`` is initialised, which would leave a
    rank's folder without weights. Tied tensors are stored once, under their first name in
    ``state_dict`` order (the input embedding), as ``save_pretrained`` does.
    """
    from safetensors.torch import save_file

    seen: set[tuple] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        tensors[name] = tensor.detach().contiguous()
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    save_file(tensors, str(Path(folder) / "model.safetensors"), metadata={"format": "pt"})


def tokenizer_dir(cfg: ModelConfig) -> Path:
    """The folder the tokenizer (and the model) load from; prepares it on first use. A random
    ``tiny`` borrows SmolLM2's folder: its weights are never written."""
    if cfg.init == "random" and cfg.name_or_path == "tiny":
        return resolve_model_dir(ModelConfig(name_or_path=SMOLLM2))
    return resolve_model_dir(cfg)


def load_tokenizer(cfg: ModelConfig):
    """Tokenizer for ``cfg`` (see :func:`tokenizer_dir`), with a pad token."""
    model_dir = tokenizer_dir(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
    except OSError as exc:
        raise ModelError(f"model.name_or_path: cannot load a tokenizer from {model_dir}: {exc}") from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def torch_dtype(name: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[name]


def random_config(cfg: ModelConfig):
    """The architecture ``model.init: random`` builds: ``tiny``'s LlamaConfig (vocabulary of
    SmolLM2's tokenizer), else the named folder's or id's ``config.json``."""
    if cfg.name_or_path == "tiny":
        vocab = len(AutoTokenizer.from_pretrained(tokenizer_dir(cfg)))
        return LlamaConfig(tie_word_embeddings=True, **{"vocab_size": vocab, **TINY_DEFAULTS, **cfg.tiny})
    return AutoConfig.from_pretrained(resolve_model_dir(cfg), trust_remote_code=cfg.trust_remote_code)


def build_model(cfg: ModelConfig):
    """Instantiate the backbone (inside whatever ZeRO-3 context the caller set up): its weights
    from ``name_or_path``, or, with ``model.init: random``, fresh ones from the global RNG."""
    model_dir = tokenizer_dir(cfg)
    try:
        config = random_config(cfg) if cfg.init == "random" else AutoConfig.from_pretrained(
            model_dir, trust_remote_code=cfg.trust_remote_code)
        # HF's weight init zeroes the embedding's padding row; under ZeRO-3 partitioned init
        # that row is not on this rank and init fails. The row only matters for training the
        # embedding of pad tokens, which sit behind the attention mask, so it is dropped.
        config.pad_token_id = None
        if cfg.init == "random":
            model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype(cfg.dtype),
                                                     trust_remote_code=cfg.trust_remote_code,
                                                     attn_implementation=cfg.attn_implementation)
        else:
            model = AutoModelForCausalLM.from_pretrained(
                model_dir,
                config=config,
                dtype=torch_dtype(cfg.dtype),
                trust_remote_code=cfg.trust_remote_code,
                attn_implementation=cfg.attn_implementation,
            )
    except OSError as exc:
        raise ModelError(f"model.name_or_path: cannot load a model from {model_dir}: {exc}") from None
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model
