"""Driver side of ``distrec predict``: which method a run is, the artefacts its scorer needs, the pipeline.

A run is one of: an LLM run's distrec folder (``<storage>/<run_name>/distrec``, with
``config_train.yaml``; CTR or generative by its ``data.task``), or an EIMF stage folder
(``<out_dir>/ibim`` or ``<out_dir>/eimf``). The artefacts come from the run's saved config
through the same ``ensure_*`` calls as training (the prepared folder and its interaction log,
the SUBR folder and item space, the CRM), so they are found, not rebuilt, when the run's
``DISTREC_HOME`` is the predictor's.
"""

from __future__ import annotations

import dataclasses

from distrec.errors import ConfigError, DataError
from distrec.predict.pipeline import PredictOptions, PredictResult, ScorerSpec, input_schema, run_predict


def predict(run: str, input_spec: str, out: str, opts: PredictOptions, *, top_k: int | None = None,
            batch_size: int | None = None, overwrite: bool = False, overrides: list[str] | None = None) -> PredictResult:
    """Score ``input_spec`` with the run at ``run`` into ``out``; see :func:`run_predict` for errors."""
    from distrec.predict.eimf import eimf_spec, is_eimf_run

    schema, files = input_schema(input_spec)  # listed and counted once, here
    if is_eimf_run(run):
        if overrides:
            raise ConfigError(f"{run}: an EIMF stage folder takes no config overrides (got {overrides})")
        from distrec.config import RayConfig
        from distrec.train.launcher import init_ray, loopback_env

        loopback_env(RayConfig())
        init_ray(RayConfig(num_workers=1))
        use_gpu = _cluster_has_gpus()
        spec = eimf_spec(run, schema, top_n=top_k or 20, batch_size=batch_size or 256, use_gpu=use_gpu)
        return run_predict(spec, input_spec, out, opts, {"run": str(run)}, overwrite=overwrite, files=files)
    return _predict_llm(run, input_spec, out, opts, schema, files, top_k, batch_size, overwrite, overrides or [])


def _cluster_has_gpus() -> bool:
    import ray

    return int(ray.cluster_resources().get("GPU", 0)) > 0


def _predict_llm(run, input_spec, out, opts, schema, files, top_k, batch_size, overwrite, overrides) -> PredictResult:
    import ray

    from distrec.config import load_job_config
    from distrec.config_loader import to_dict
    from distrec.data import storage
    from distrec.eval.environment import run_environment
    from distrec.predict.llm import CtrScorer, GenerativeScorer
    from distrec.predict.samples import check_columns
    from distrec.storage_uri import local_copy, locate
    from distrec.train.artefacts import ensure_crm, ensure_prepared, ensure_retrieval, subr_config
    from distrec.train.launcher import check_complete, init_ray, loopback_env

    where = locate(run)
    config = where / "config_train.yaml"
    if not config.is_file():
        raise ConfigError(f"{run}: neither an LLM run's distrec folder (no config_train.yaml) nor an EIMF stage "
                          "folder (model.safetensors + eimf_config.json)")
    check_complete(where)
    with local_copy(config) as path:
        job = load_job_config(path, overrides)
    check_columns(schema, job.data.task, input_spec)
    source = ensure_prepared(job)
    if "interactions" not in storage.read_manifest(source)["tables"]:
        raise DataError(f"{source}: this prepared folder has no interaction log (made by an older distrec); "
                        "prepare it again (delete it) to score rows by user and time")
    loopback_env(job.ray)
    init_ray(job.ray)
    prepared, space = source, None
    if job.subr.enabled:
        from distrec.retrieval.pipeline import item_space

        prepared = ensure_retrieval(job, source)
        built, _ = item_space(storage.open_table(source, "items"), job.data.dataset, subr_config(job),
                              encode_actors=job.ray.data_actors)
        space = [ray.put(built)]
    crm = str(ensure_crm(job)) if job.needs_crm else None
    use_gpu = _cluster_has_gpus()
    kwargs = dict(job=to_dict(job), run=str(run), source=str(source), prepared=str(prepared), space=space, crm=crm,
                  batch_size=batch_size or job.eval.batch_size, use_gpu=use_gpu)
    if job.data.task == "ctr":
        spec = ScorerSpec(CtrScorer, kwargs, "ctr", num_gpus=1.0 if use_gpu else 0.0)
    else:
        kwargs["top_k"] = top_k or max(job.eval.ks)
        spec = ScorerSpec(GenerativeScorer, kwargs, "generative", num_gpus=1.0 if use_gpu else 0.0)
    meta = {"run": str(run), "config_hash": run_environment(to_dict(job))["config_hash"],
            "options": dataclasses.asdict(opts)}
    return run_predict(spec, input_spec, out, opts, meta, overwrite=overwrite, files=files)
