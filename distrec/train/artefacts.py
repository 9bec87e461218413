"""Driver side: build (or reuse) what a run reads before any worker starts.

prepared samples (``data``) -> retrieval-augmented samples (``subr``, ReLLaX SUBR) ->
the frozen CRM (``crm``, DIN; read by SPA and CFLoRA). Each is a folder keyed by a hash of
the settings that determine it, published by :mod:`distrec.atomic`, built under a lock (so
concurrent drivers build it once) and reused when complete, so ``distrec train`` runs every
stage it lacks and none twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from distrec import atomic, paths
from distrec.config import JobConfig
from distrec.data import storage

# SubrConfig fields that change nothing in the output (speed knobs and the on/off switch).
_SUBR_NEUTRAL = ("enabled", "method", "max_matrix_items", "batch_size", "encode_batch_size")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def ensure_prepared(job: JobConfig, data=None) -> Path:
    """The prepared dataset folder for ``data`` (default ``job.data``), preparing it first when needed."""
    from distrec.data.prepare import default_out, is_prepared, prepare

    data = data or job.data
    out = Path(data.prepared_dir) if data.prepared_dir else default_out(data)
    if is_prepared(out, data):
        return out
    with atomic.lock(out):  # concurrent drivers: one prepares, the others wait and reuse
        if not is_prepared(out, data):
            out, _ = prepare(data, out=out)
    return out


def subr_config(job: JobConfig):
    """``job.subr`` with ``encoder: backbone`` resolved to the job's own LLM (ReLLa's choice)."""
    if job.subr.encoder != "backbone":
        return job.subr
    from distrec.model.backbone import resolve_model_dir

    return dataclasses.replace(job.subr, encoder=f"llm:{resolve_model_dir(job.model)}")


def subr_key(job: JobConfig) -> dict:
    key = {k: v for k, v in dataclasses.asdict(job.subr).items() if k not in _SUBR_NEUTRAL}
    if job.subr.encoder == "backbone":
        key["backbone"] = job.model.name_or_path
    return key


def retrieval_dir(job: JobConfig, prepared: Path) -> Path:
    """``<prepared>-subr-<hash of the SUBR settings>``, beside its source folder."""
    return prepared.with_name(f"{prepared.name}-subr-{_digest(subr_key(job))}")


def _retrieval_is_current(out: Path, job: JobConfig, prepared: Path) -> bool:
    try:
        meta = storage.read_manifest(out).get("subr", {})
    except Exception:  # noqa: BLE001 - missing or half-written: rebuild
        return False
    source = storage.read_manifest(prepared)["splits"]
    same_source = meta.get("source_splits_sha256") == {n: s["sha256"] for n, s in source.items()}
    return same_source and meta.get("key") == subr_key(job)


def ensure_retrieval(job: JobConfig, prepared: Path) -> Path:
    """The SUBR-augmented copy of ``prepared`` (adds ``history_indices``), built with Ray Data if missing."""
    from distrec.retrieval.pipeline import build_retrieval

    out = retrieval_dir(job, prepared)
    if _retrieval_is_current(out, job, prepared):
        return out
    with atomic.lock(out):
        if not _retrieval_is_current(out, job, prepared):
            build_retrieval(prepared, out, subr_config(job), n_actors=job.ray.data_actors, overwrite=out.exists(),
                            extra_meta={"key": subr_key(job)})
    return out


def full_data(job: JobConfig):
    """``job.data`` without few-shot subsets: the CRM learns from the whole training split."""
    return dataclasses.replace(job.data, train_size=None, valid_size=None, test_size=None, prepared_dir=None)


def din_config(job: JobConfig):
    """The DIN architecture/training part of ``job.crm`` (its ``path`` is where, not what)."""
    from distrec.config.din import DinConfig

    names = {f.name for f in dataclasses.fields(DinConfig)}
    return DinConfig(**{k: v for k, v in dataclasses.asdict(job.crm).items() if k in names})


def crm_dir(job: JobConfig) -> Path:
    """``crm.path``, or ``$DISTREC_HOME/crm/<dataset>-din-<hash of data + DIN (+ SUBR) settings>``."""
    if job.crm.path:
        return Path(job.crm.path).expanduser()
    return paths.distrec_home() / "crm" / crm_run_name(job)


def crm_run_name(job: JobConfig) -> str:
    """``<dataset>-din-<hash of data + DIN (+ SUBR) settings>``: the CRM's folder and run name."""
    from distrec.data.prepare import config_key

    key = {"data": config_key(full_data(job)), "din": dataclasses.asdict(din_config(job))}
    if job.crm.history == "retrieved":
        key["subr"] = subr_key(job)
    return f"{job.data.dataset}-din-{_digest(key)}"


def crm_job(job: JobConfig) -> JobConfig:
    """The job that trains ``job``'s CRM in the one loop: ``model.kind: din`` on the full CTR
    split, ``crm.*`` as its optimisation (``crm.batch_size`` global, AdamW at a constant
    ``crm.lr``, validation AUC each epoch, early stop after ``crm.patience`` epochs without a
    better one), plain data parallel (ZeRO stage 0, fp32) on ``job.ray``'s workers. Its run is
    ``$DISTREC_HOME/crm/runs/<crm_run_name>``, so an interrupted CRM resumes. ConfigError when
    ``crm.batch_size`` does not split over ``ray.num_workers``."""
    from distrec.config import DebugConfig, SpaConfig
    from distrec.train.launcher import data_parallel_job

    c = job.crm
    din = data_parallel_job(job, "din", batch_key="crm.batch_size", global_batch=c.batch_size,
                            eval_batch=c.eval_batch_size, epochs=c.epochs, lr=c.lr, weight_decay=c.weight_decay,
                            patience=c.patience, seed=c.seed, log_every=10)
    return dataclasses.replace(
        din, data=full_data(job), adapter=dataclasses.replace(job.adapter, kind="none"), spa=SpaConfig(enabled=False),
        ray=dataclasses.replace(job.ray, storage_path=str(paths.distrec_home() / "crm" / "runs"),
                                run_name=crm_run_name(job)),
        debug=DebugConfig())


def ensure_crm(job: JobConfig) -> Path:
    """A trained DIN folder for this job: reused when present, else trained by the one loop
    (:func:`crm_job`) and published with its ``metrics.json`` (the
    run's selected-state valid and test metrics, steps, best step)."""
    from distrec.model.crm.artefact import METRICS, REQUIRED, json_safe
    from distrec.train.launcher import run_job

    out = crm_dir(job)
    if atomic.is_complete(out, REQUIRED):
        return out
    crm = crm_job(job)
    source = ensure_prepared(crm)
    if job.crm.history == "retrieved":
        source = ensure_retrieval(job, source)
    with atomic.lock(out):
        if atomic.is_complete(out, REQUIRED):
            return out
        run = run_job(crm, prepared=source)
        din = Path(run.run_dir) / "din"

        with atomic.staged(out, REQUIRED, overwrite=True) as tmp:
            for f in REQUIRED:
                (tmp / f).write_bytes((din / f).read_bytes())
            metrics = {k: run.metrics[k] for k in ("train", "valid", "test") if k in run.metrics}
            (tmp / METRICS).write_text(json.dumps(json_safe({**metrics, "run": str(run.run_dir)}), indent=2) + "\n")
    test = run.metrics.get("test") or {}
    print(f"CRM (DIN) trained on {run.metrics['train']['samples']} samples: test AUC "
          f"{test.get('auc', float('nan')):.4f} -> {out}", flush=True)
    return out
