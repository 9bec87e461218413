"""``distrec export``: a finished run -> a merged Hugging Face model folder for serving.

The run's adapter is folded into the base weights (``W = W0 + s·B·A``; for CFLoRA with an
instance-independent G, ``W = W0 + s·B·G·A``, ReLLaX §3.7) and the result is written with
transformers' ``save_pretrained`` together with the tokenizer the run trained with, so
``AutoModelForCausalLM.from_pretrained(OUT)`` serves it with neither distrec nor PEFT
installed. The folder carries a model card (``README.md``): data, method, base model, metrics,
the full training config and the command that made it. It appears atomically
(:func:`distrec.atomic.staged`): a failure leaves no folder, or the previous one untouched.

Refused, with the reason (:class:`~distrec.errors.ModelError`):

- CFLoRA with ``mode: generated``: each instance gets its own ``G_u`` from the CRM's
  representation of that user and target item, so there is one update per row and no single
  merged weight.
- SPA (``spa.enabled``): the placeholder tokens' input embeddings are replaced per row by
  projected CRM embeddings; a plain checkpoint takes token ids only.
- Full fine-tuning (``adapter.kind: none``): the run exports no adapter to merge.

The run folder is ``<storage>/<run_name>/distrec`` (local path or URI, as for ``distrec eval``);
the merge runs on CPU in this process, which must not be part of a ``torch.distributed`` group
(transformers then writes on rank 0 only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from distrec import atomic
from distrec.config import JobConfig, load_job_config
from distrec.errors import ModelError
from distrec.storage_uri import Location, local_copy, locate

#: Files a merged export must hold before it is published (weights may be sharded).
MERGED_FILES = ("config.json", "model*.safetensors", "tokenizer_config.json", "README.md")


@dataclass
class ExportResult:
    out: Path
    method: str
    dtype: str


def mergeable_problems(job: JobConfig, adapter_dir: Path | None = None) -> list[str]:
    """Why the run described by ``job`` (and its saved ``adapter_dir``) has no single merged
    checkpoint; empty when it has one. A CFLoRA export's own config decides its mode."""
    problems = []
    if job.adapter.kind == "none":
        problems.append("adapter.kind is 'none' (full fine-tuning): the run exported no adapter to merge")
    if job.adapter.kind == "cflora":
        mode = job.adapter.cflora.mode
        if adapter_dir is not None and (adapter_dir / "adapter_config.json").is_file():
            from distrec.model.adapters.cflora import CFLoraAdapter

            mode = CFLoraAdapter.read_config(adapter_dir)[0].cflora.mode
        if mode == "generated":
            problems.append(
                "CFLoRA with adapter.cflora.mode 'generated' computes its r×r interaction G_u per instance "
                "from the CRM's representation of that user and target item, so every row gets its own weight "
                "update B·G_u·A and no single merged weight exists (only static, identity and zero G merge); "
                "serve it through distrec, which rebuilds the CRM features per row")
    if job.spa.enabled:
        problems.append(
            "SPA (spa.enabled) replaces the input embeddings of the soft-prompt placeholder tokens per row "
            "with projected CRM item embeddings (the run's spa/ projector and CRM); a plain checkpoint takes "
            "token ids only and cannot reproduce them; serve it through distrec")
    return problems


def export_merged(run: str | Path, out: str | Path, *, overwrite: bool = False, dtype: str | None = None,
                  command: str | None = None) -> ExportResult:
    """Merge the adapter of the finished run ``run`` into its base model and publish it at ``out``.

    Args:
        run: the run's distrec folder (local path or URI).
        out: the folder to create (local).
        overwrite: replace an existing ``out`` (only one that holds a model, ``config.json``,
            or is empty: a folder of other files is never deleted).
        dtype: "fp32" or "bf16" for the saved weights; default the run's ``model.dtype``. The
            merge itself is done in fp32.
        command: the command line recorded in the model card.

    Raises:
        ModelError: unfinished run, missing adapter, a run that cannot be merged (see the module
            docstring), an existing ``out`` without ``overwrite``, a base model that fails to load.
        ConfigError: a bad ``config_train.yaml``.
    """
    from distrec.train.launcher import check_complete

    loc, out = locate(run), Path(out).expanduser().resolve()
    _check_target(out, overwrite)
    check_complete(loc)
    job = _run_config(loc)
    dtype = dtype or job.model.dtype
    if dtype not in ("fp32", "bf16"):
        raise ModelError(f"export dtype must be fp32 or bf16, got {dtype!r}")
    if problems := mergeable_problems(job):
        raise ModelError(f"{loc.uri}: cannot export a merged checkpoint: " + "; ".join(problems))
    metrics = json.loads((loc / "metrics_train.json").read_text())
    with local_copy(loc / "adapter") as adapter_dir:
        if not (adapter_dir / "adapter_config.json").is_file():
            raise ModelError(f"{(loc / 'adapter').uri}: no adapter_config.json (the run's exported adapter)")
        if problems := mergeable_problems(job, adapter_dir):
            raise ModelError(f"{loc.uri}: cannot export a merged checkpoint: " + "; ".join(problems))
        model, tokenizer, base_dir = _merged_model(job, adapter_dir)
        adapter_sha = _sha256(adapter_dir / "adapter_model.safetensors")
    from distrec.model.backbone import torch_dtype

    model = model.to(torch_dtype(dtype))
    card = model_card(job, metrics, run=loc.uri, base_dir=str(base_dir), adapter_sha256=adapter_sha,
                      dtype=dtype, command=command)
    with atomic.staged(out, MERGED_FILES, overwrite=overwrite, exists_error=ModelError) as tmp:
        model.save_pretrained(tmp)  # safetensors, sharded past 50 GB
        tokenizer.save_pretrained(tmp)
        atomic.write_text(tmp / "README.md", card)
    return ExportResult(out=out, method=method_name(job), dtype=dtype)


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists():
        return
    if not overwrite:
        raise ModelError(f"{out} already exists; pass --overwrite to replace it")
    if not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file()):
        raise ModelError(f"{out} exists and is not a model folder (no config.json); refusing to replace it, "
                         "even with --overwrite")


def _run_config(loc: Location) -> JobConfig:
    config = loc / "config_train.yaml"
    if not config.is_file():
        raise ModelError(f"{config.uri}: not found (a run's distrec folder holds config_train.yaml)")
    with local_copy(config) as path:
        return load_job_config(path)


def _merged_model(job: JobConfig, adapter_dir: Path):
    """``(merged fp32 model, tokenizer, base model folder)``: the base loaded as transformers
    does for serving (not distrec's training build), the adapter attached through its
    :class:`~distrec.model.adapters.base.Adapter` ``load`` and folded in."""
    import torch
    from transformers import AutoModelForCausalLM

    from distrec.model.adapters import make_adapter
    from distrec.model.backbone import load_tokenizer, resolve_model_dir

    base_dir = resolve_model_dir(job.model)
    tokenizer = load_tokenizer(job.model)
    try:
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32,
                                                    trust_remote_code=job.model.trust_remote_code)
    except OSError as exc:
        raise ModelError(f"model.name_or_path: cannot load the base model from {base_dir}: {exc}") from None
    adapter = make_adapter(job.adapter, d_instance=job.crm.hidden_size)
    model = adapter.load(base, adapter_dir).eval()
    if job.adapter.kind == "lora":
        model = model.merge_and_unload()
    else:
        model = adapter.merge(model)
    return model, tokenizer, base_dir


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def method_name(job: JobConfig) -> str:
    """One line naming the method of a run: objective, retrieval, adapter."""
    a = job.adapter
    if job.data.task == "ctr":
        objective = "CTR yes/no fine-tuning (ReLLa prompt)"
    elif job.cft.lam > 0:
        objective = f"CFT, counterfactual fine-tuning (lam={job.cft.lam}, weights {job.cft.weight_rule})"
    else:
        objective = "SFT next-item generation (BIGRec prompt)"
    parts = [objective]
    if job.subr.enabled:
        parts.append(f"SUBR retrieved history (k={job.subr.k}, order {job.subr.order}, encoder {job.subr.encoder})")
    if a.kind == "lora":
        parts.append(f"LoRA r={a.r}, alpha={a.alpha} on {', '.join(a.target_modules)}")
    elif a.kind == "cflora":
        parts.append(f"CFLoRA ({a.cflora.mode} G) r={a.r}, alpha={a.alpha} on {', '.join(a.target_modules)}")
    return "; ".join(parts)


def _usage(job: JobConfig) -> list[str]:
    lines = ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "model = AutoModelForCausalLM.from_pretrained(OUT)", "tokenizer = AutoTokenizer.from_pretrained(OUT)",
             "```", ""]
    if job.data.task == "ctr":
        lines += ["Prompts must be built as in training (distrec's ReLLa CTR prompt, left-padded, "
                  f"history of {job.prompt.history_k} items"
                  + (", retrieved by SUBR" if job.subr.enabled else "")
                  + "); the score is P(yes) = softmax([z_No, z_Yes])[1] of the answer tokens' logits "
                  "at the last position."]
    else:
        lines += ["Prompts must be built as in training (distrec's BIGRec prompt); generated titles are "
                  "grounded to catalogue items as `distrec eval` does."]
    return lines


def model_card(job: JobConfig, metrics: dict, *, run: str, base_dir: str, adapter_sha256: str, dtype: str,
               command: str | None) -> str:
    """The export's README.md (Markdown with Hugging Face front matter)."""
    from distrec.config_loader import to_dict
    from distrec.eval.report import metrics_section

    d = job.data
    data_rows = [f"- dataset: `{d.dataset}`" + (f" (raw files `{d.raw_path}`)" if d.raw_path else ""),
                 f"- task: `{d.task}`; chronological split {d.split}; seed {d.seed}",
                 f"- samples used: train {d.train_size or 'all'}, valid {d.valid_size or 'all'}, "
                 f"test {d.test_size or 'all'}"]
    lines = [
        "---", "library_name: transformers", "pipeline_tag: text-generation",
        "tags: [distrec, recommendation, merged-adapter]", "---", "",
        f"# {Path(run).parent.name or 'distrec run'} (merged)", "",
        "A causal LM fine-tuned by distrec for recommendation, with the adapter merged into the base "
        "weights: it loads with `transformers` alone.", "",
        "## Method", "", f"- {method_name(job)}",
        f"- base model: `{job.model.name_or_path}` (weights from `{base_dir}`)",
        f"- saved weights: {dtype}; merged in fp32", "",
        "## Data", "", *data_rows, "",
        "## Use", "", *_usage(job), "",
        "## Metrics", "", "From the run's `metrics_train.json` (scored by distrec with the unmerged adapter).", "",
        *metrics_section(metrics), "",
        "## Provenance", "",
        f"- run: `{run}`",
        f"- adapter: `adapter/adapter_model.safetensors`, sha256 `{adapter_sha256}`",
        f"- made by: `{command or 'distrec.export.export_merged'}`", "",
        "## Training config", "", "```yaml", yaml.safe_dump(to_dict(job), sort_keys=False).rstrip(), "```", "",
    ]
    return "\n".join(lines)
