"""Driver side of ``distrec train`` / ``distrec eval``: data -> Ray Data -> TorchTrainer -> report.

The same entry point runs locally (it starts a loopback-only Ray) and under
``ray job submit --working-dir . -- distrec train ...`` (it joins the cluster in $RAY_ADDRESS).
Re-running with the same ``ray.run_name`` and ``ray.storage_path`` resumes that run from its
latest checkpoint; a run without a name gets a fresh timestamped one, so nothing resumes by
accident. ``ray.storage_path`` may be a local folder or a URI (``s3://bucket/prefix``, see
:mod:`distrec.storage_uri`); the run's outputs go to ``<storage>/<run_name>/distrec`` either way.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from distrec.config import JobConfig, RayConfig
from distrec.config_loader import to_dict
from distrec.storage_uri import Location, locate

# Keep every Ray and torch.distributed socket on loopback in local mode.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo", "DS_ACCELERATOR": "cpu"}


@dataclass
class RunResult:
    run_dir: Path | str  # distrec's outputs: tensorboard/, adapter/, predictions, report.md (a URI str off local disk)
    metrics: dict
    report: Path | str | None
    elapsed_s: float


def loopback_env(cfg: RayConfig) -> None:
    """Local runs keep Ray and torch.distributed on loopback. Must precede Ray's import: Ray reads
    these when it decides which address to advertise."""
    if cfg.address is None and not os.environ.get("RAY_ADDRESS"):
        os.environ.update({k: os.environ.get(k, v) for k, v in LOOPBACK_ENV.items()})


def init_ray(cfg: RayConfig) -> None:
    """Join ``cfg.address``/$RAY_ADDRESS, or start a local loopback-only Ray."""
    import ray

    if ray.is_initialized():
        return
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    runtime_env = {"env_vars": {k: os.environ.get(k, v) for k, v in LOOPBACK_ENV.items()}} if not cfg.use_gpu else {}
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        return
    cpus = max(os.cpu_count() or 1, int(cfg.num_workers * cfg.cpus_per_worker + 1))
    ray.init(
        num_cpus=cpus,
        include_dashboard=True,  # Ray Train's placement-group cleaner polls the state API it serves
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        runtime_env=runtime_env,
        log_to_driver=True,
    )


def check_one_step(manifest: dict, job: JobConfig, prepared: Path) -> None:
    """Refuse a train split smaller than one optimiser step (ranks x micro-batch x accumulation)."""
    rows = manifest["splits"].get("train", {}).get("rows", 0)
    t = job.train
    need = job.ray.num_workers * t.micro_batch_size * t.grad_accum
    if rows < need:
        from distrec.errors import DataError

        raise DataError(f"{prepared}: the train split has {rows} rows, fewer than one optimiser step of {need} "
                        f"(ray.num_workers={job.ray.num_workers} x train.micro_batch_size={t.micro_batch_size} x "
                        f"train.grad_accum={t.grad_accum})")


def check_gpus(cfg: RayConfig) -> None:
    """``ray.use_gpu`` on a local cluster without enough GPUs is a config error, not a hang.

    A remote cluster may autoscale GPU nodes in, so there Ray Train waits for them instead."""
    import ray

    if not cfg.use_gpu or cfg.address or os.environ.get("RAY_ADDRESS"):
        return
    have = int(ray.cluster_resources().get("GPU", 0))
    if have < cfg.num_workers:
        from distrec.errors import ConfigError

        raise ConfigError(f"ray.use_gpu=true needs {cfg.num_workers} GPUs (ray.num_workers) but this machine's Ray "
                          f"cluster has {have}; set ray.use_gpu=false or run on a GPU cluster")


def check_storage(job: JobConfig, storage: Location) -> None:
    """Fault injection and consumption records keep marker and record files on local disk, so
    they need a local ``ray.storage_path``."""
    keys = job.debug.active
    if keys and not storage.is_local:
        from distrec.errors import ConfigError

        raise ConfigError(f"{', '.join(keys)} need a local ray.storage_path (their files stay on local disk); "
                          f"got {storage.uri}")


def check_complete(run: Location) -> None:
    """``distrec eval`` reads a finished run only: its ``metrics_train.json`` is published last."""
    if not (run / "metrics_train.json").is_file():
        from distrec.errors import ModelError

        raise ModelError(f"{run.uri}: no metrics_train.json, so the run has not finished (or is not a run's "
                         "distrec folder, <storage>/<run_name>/distrec); finish it with the same ray.run_name first")


def data_parallel_job(job: JobConfig, kind: str, *, batch_key: str, global_batch: int, eval_batch: int,
                      **train) -> JobConfig:
    """``job`` set to train ``model.kind: kind`` as plain data parallel on ``job.ray``'s workers
    (ZeRO stage 0, fp32, no clipping) at a constant learning rate: ``global_batch`` rows a step
    split over the ranks, ``eval_batch`` rows an evaluation batch, ``train``: the other
    :class:`~distrec.config.TrainConfig` fields. The DIN (``crm.*``) and EIMF (``eimf.train.*``)
    keep their settings as a global batch and reach the loop through this. ConfigError names
    ``batch_key`` when the batch does not split over ``ray.num_workers``."""
    import dataclasses

    from distrec.config import DeepSpeedConfig, TrainConfig
    from distrec.errors import ConfigError

    world = job.ray.num_workers
    if global_batch % world:
        raise ConfigError(f"{batch_key}={global_batch} must be divisible by ray.num_workers={world} "
                          "(it is the global batch)")
    return dataclasses.replace(
        job, model=dataclasses.replace(job.model, kind=kind),
        train=TrainConfig(lr_schedule="constant", micro_batch_size=global_batch // world, **train),
        deepspeed=DeepSpeedConfig(zero_stage=0, precision="fp32", gradient_clipping=0.0),
        eval=dataclasses.replace(job.eval, batch_size=max(1, eval_batch // world), max_samples=None, generate=False))


def run_name(job: JobConfig) -> str:
    return job.ray.run_name or f"{job.data.dataset}-{job.data.task}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_job(job: JobConfig, mode: str = "train", run_dir: str | Path | None = None,
            prepared: Path | None = None) -> RunResult:
    """Prepare data, train (or only evaluate) any ``model.kind`` under Ray Train, write the report.
    This builds the only ``TorchTrainer`` in distrec.

    ``run_dir``: for ``mode="eval"``, the run's distrec folder (local path or URI).
    ``prepared``: a prepared folder to read instead of the job's own (SUBR included)."""
    started = time.perf_counter()
    loopback_env(job.ray)
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    from distrec.data import storage as data_storage
    from distrec.eval.report import format_summary, publish_report
    from distrec.train.artefacts import ensure_crm, ensure_prepared, ensure_retrieval
    from distrec.model.backbone import tokenizer_dir
    from distrec.train.token_cache import split_files
    from distrec.train.loop import train_worker

    storage = locate(job.ray.storage_path)
    check_storage(job, storage)
    run = storage / run_name(job) / "distrec" if run_dir is None else locate(run_dir)
    if mode == "eval":
        check_complete(run)
    name = run.parent.name
    llm = job.model.kind == "causal_lm"
    given = prepared is not None
    prepared = prepared if given else ensure_prepared(job)
    manifest = data_storage.verify(prepared)  # a truncated or edited shard fails here, named, not inside a Ray task
    if mode == "train":
        check_one_step(manifest, job, prepared)
    if llm:
        tokenizer_dir(job.model)  # fetch/convert model files once, here, not in every worker
    init_ray(job.ray)
    check_gpus(job.ray)
    if job.subr.enabled and not given and (llm or job.crm.history == "retrieved"):
        prepared = ensure_retrieval(job, prepared)
    crm = str(ensure_crm(job)) if llm and job.needs_crm else None
    (run / f"config_{mode}.yaml").write_text(yaml.safe_dump(to_dict(job), sort_keys=False))

    splits = ["train", "valid", "test"] if mode == "train" else ["test"]
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": to_dict(job), "run": run, "mode": mode, "splits": splits,
                           "prepared_dir": str(prepared), "crm_dir": crm,
                           "token_files": split_files(job, prepared, splits)},
        scaling_config=ScalingConfig(
            num_workers=job.ray.num_workers,
            use_gpu=job.ray.use_gpu,
            resources_per_worker={"CPU": job.ray.cpus_per_worker, **({"GPU": 1} if job.ray.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name if mode == "train" else f"{name}-eval-{time.strftime('%Y%m%d-%H%M%S')}",
            **storage.ray_storage(),
            failure_config=FailureConfig(max_failures=job.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.ray.num_to_keep),
            worker_runtime_env={"env_vars": dict(job.ray.worker_env)} if job.ray.worker_env else None,
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    run_dir = Path(run.path) if run.is_local else run.uri
    metrics_file = run / f"metrics_{mode}.json"
    if not metrics_file.is_file():  # paused by train.stop_at_step: checkpoint written, no evaluation yet
        print(f"run {name} paused at step {job.train.stop_at_step}; run again with ray.run_name={name} to continue")
        return RunResult(run_dir=run_dir, metrics={}, report=None, elapsed_s=time.perf_counter() - started)
    metrics = json.loads(metrics_file.read_text())
    exported = "adapter" if llm else job.model.kind  # the builder's export: adapter/, din/ or eimf/
    paths = {
        "predictions": str(run / "predictions_test.parquet"),
        exported: str(run / exported),
        "checkpoints": str(storage / name),
        "prepared data": str(prepared),
        **({"crm": crm} if crm else {}),
        "tensorboard": str(run / "tensorboard"),
    }
    summary = {f"{split}.{k}": v for split, m in metrics.items() for k, v in m.items()}
    elapsed = time.perf_counter() - started
    summary["wall_time_s"] = elapsed
    report = publish_report(run, summary, paths)
    print(format_summary(summary, paths), flush=True)
    return RunResult(run_dir=run_dir, metrics=metrics, report=report, elapsed_s=elapsed)
