"""Driver side of ``distrec train`` / ``distrec eval``: data -> Ray Data -> TorchTrainer -> report.

The same entry point runs locally (it starts a loopback-only Ray) and under
``ray job submit --working-dir . -- distrec train ...`` (it joins the cluster in $RAY_ADDRESS).
Re-running with the same ``ray.run_name`` and ``ray.storage_path`` resumes that run from its
latest checkpoint; a run without a name gets a fresh timestamped one, so nothing resumes by
accident.
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

# Keep every Ray and torch.distributed socket on loopback in local mode.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo", "DS_ACCELERATOR": "cpu"}


@dataclass
class RunResult:
    run_dir: Path  # distrec's outputs: tensorboard/, adapter/, predictions, report.md
    metrics: dict
    report: Path | None
    elapsed_s: float


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


def run_name(job: JobConfig) -> str:
    return job.ray.run_name or f"{job.data.dataset}-{job.data.task}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_job(job: JobConfig, mode: str = "train", run_dir: Path | None = None) -> RunResult:
    """Prepare data, train (or only evaluate) under Ray Train, write the report."""
    started = time.perf_counter()
    if job.ray.address is None and not os.environ.get("RAY_ADDRESS"):
        # Must precede Ray's import: Ray reads these when it decides which address to advertise.
        os.environ.update({k: os.environ.get(k, v) for k, v in LOOPBACK_ENV.items()})
    from ray.train import (
        CheckpointConfig,
        DataConfig,
        FailureConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    from distrec.data import storage as data_storage
    from distrec.eval.report import format_summary, write_report
    from distrec.train.artefacts import ensure_crm, ensure_prepared, ensure_retrieval
    from distrec.model.backbone import tokenizer_dir
    from distrec.train.data_stream import tokenized_splits
    from distrec.train.loop import train_worker

    prepared = ensure_prepared(job)
    manifest = data_storage.verify(prepared)  # a truncated or edited shard fails here, named, not inside a Ray task
    if mode == "train":
        check_one_step(manifest, job, prepared)
    tokenizer_dir(job.model)  # fetch/convert model files once, here, not in every worker
    init_ray(job.ray)
    check_gpus(job.ray)
    if job.subr.enabled:
        prepared = ensure_retrieval(job, prepared)
    crm = str(ensure_crm(job)) if job.needs_crm else None
    storage = Path(job.ray.storage_path).expanduser().resolve()
    name = run_name(job) if run_dir is None else Path(run_dir).parent.name
    run_dir = storage / name / "distrec" if run_dir is None else Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"config_{mode}.yaml").write_text(yaml.safe_dump(to_dict(job), sort_keys=False))

    splits = ["train", "valid", "test"] if mode == "train" else ["test"]
    datasets = tokenized_splits(job, prepared, splits)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"job": to_dict(job), "run_dir": str(run_dir), "mode": mode, "splits": splits,
                           "prepared_dir": str(prepared), "crm_dir": crm},
        scaling_config=ScalingConfig(
            num_workers=job.ray.num_workers,
            use_gpu=job.ray.use_gpu,
            resources_per_worker={"CPU": job.ray.cpus_per_worker, **({"GPU": 1} if job.ray.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=name if mode == "train" else f"{name}-eval-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=job.ray.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=job.ray.num_to_keep),
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=[]),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    metrics_file = run_dir / f"metrics_{mode}.json"
    if not metrics_file.is_file():  # paused by train.stop_at_step: checkpoint written, no evaluation yet
        print(f"run {name} paused at step {job.train.stop_at_step}; run again with ray.run_name={name} to continue")
        return RunResult(run_dir=run_dir, metrics={}, report=None, elapsed_s=time.perf_counter() - started)
    metrics = json.loads(metrics_file.read_text())
    paths = {
        "predictions": str(run_dir / "predictions_test.parquet"),
        "adapter": str(run_dir / "adapter"),
        "checkpoints": str(storage / name),
        "prepared data": str(prepared),
        **({"crm": crm} if crm else {}),
        "tensorboard": str(run_dir / "tensorboard"),
    }
    summary = {f"{split}.{k}": v for split, m in metrics.items() for k, v in m.items()}
    elapsed = time.perf_counter() - started
    summary["wall_time_s"] = elapsed
    report = write_report(run_dir, run_dir / "tensorboard", summary, paths)
    print(format_summary(summary, paths), flush=True)
    return RunResult(run_dir=run_dir, metrics=metrics, report=report, elapsed_s=elapsed)
