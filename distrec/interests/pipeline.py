"""The EIMF experiment end to end: IBIM alone vs IBIM + ESIM, same data, seed and budget.

Stages of :func:`run_experiment` (each writes under ``out_dir``):

1. prepare the generative samples (:func:`distrec.data.prepare.prepare`, cached);
2. train the backbone alone with the training loop (Ray Train) -> ``ibim/`` (artefact, test metrics);
3. select typical users with faiss k-means on its interests -> ``typical_users.parquet``;
4. label them with the LLM (Ray Data actor pool) and embed the phrases with the text encoder
   -> ``labels.parquet``;
5. train backbone + ESIM from the same init, order and negatives -> ``eimf/``;
6. evaluate both on the test split (full catalogue) -> ``results.json`` and ``results.md``
   (the table, the number of LLM calls, LLM time, wall times).

Stage 2's model is only used to choose the typical users; stage 5 starts from scratch with the
same seed, so the only difference between the two rows is the ESIM losses.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distrec import atomic, config_loader
from distrec.config import JobConfig, load_job_config
from distrec.errors import DataError


def load_eimf_job(path: str | Path | None = None, overrides: list[str] | None = None) -> JobConfig:
    """The job config (YAML + ``key=value`` overrides) with ``model.kind: eimf``; ConfigError names
    a bad key or value, and a ``data.task`` other than ``generative``."""
    return load_job_config(path, ["model.kind=eimf", *(overrides or [])])


@dataclass
class EimfData:
    folder: Path
    train: pa.Table  # generative samples: sample_id, user_id, item_id, timestamp, history_item_ids
    test: pa.Table
    items: pa.Table  # item_id, title, categories, ...


def load_data(job: JobConfig) -> EimfData:
    """Prepare (or reuse) ``job.data`` and open its train/test splits and items table."""
    from distrec.data.prepare import prepare
    from distrec.data.storage import open_split, open_table

    folder, _ = prepare(job.data, progress=False)
    data = EimfData(folder, open_split(folder, "train"), open_split(folder, "test"), open_table(folder, "items"))
    if data.train.num_rows == 0 or data.test.num_rows == 0:
        raise DataError(f"{folder}: EIMF needs non-empty train and test splits")
    return data


def _run_name(job: JobConfig, stage: str) -> str:
    """Stage runs resume only under an explicit ``ray.run_name``; otherwise a fresh name."""
    base = job.ray.run_name or f"{Path(job.eimf.out_dir).name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return f"{base}-{stage}"


def eimf_job(job: JobConfig, labels: Path | None, stage: str):
    """The :class:`~distrec.config.JobConfig` that trains one EIMF stage in the one loop:
    ``model.kind: eimf``, ``eimf.train.batch_size`` as the global batch split over
    ``ray.num_workers`` ranks (ConfigError when it does not divide), AdamW at a constant
    ``eimf.train.lr``, plain data parallel (ZeRO stage 0, fp32, no clipping), a loss logged
    every step, validation (HR@K, NDCG@K) after each epoch."""
    import dataclasses

    from distrec.train.launcher import data_parallel_job

    tc = job.eimf.train
    staged = data_parallel_job(job, "eimf", batch_key="eimf.train.batch_size", global_batch=tc.batch_size,
                               eval_batch=job.eimf.eval.batch_size, epochs=tc.epochs, max_steps=tc.max_steps,
                               lr=tc.lr, weight_decay=tc.weight_decay, seed=tc.seed, log_every=1)
    return dataclasses.replace(
        staged, eimf=dataclasses.replace(job.eimf, labels=str(labels) if labels is not None else None),
        ray=dataclasses.replace(job.ray, run_name=_run_name(job, stage)))


def train_stage(job: JobConfig, data: EimfData, labels: Path | None, stage: str):
    """One training run of the loop + test evaluation; ``(model, report)`` with the artefact in
    ``out_dir/stage``. ``labels``: a labels table file (ESIM), or None (IBIM alone)."""
    from distrec.data.storage import write_parquet_file
    from distrec.eval.tensorboard import read_scalars
    from distrec.interests.evaluate import evaluate_retrieval
    from distrec.model.interests.artefact import METRICS, load_eimf
    from distrec.model.interests.eimf import SemanticBank
    from distrec.storage_uri import local_copy, locate
    from distrec.train.launcher import run_job

    out = Path(job.eimf.out_dir) / stage
    started = time.perf_counter()
    run = run_job(eimf_job(job, labels, stage), prepared=data.folder)
    train_wall = time.perf_counter() - started
    scalars = read_scalars(f"{run.run_dir}/tensorboard")  # a local folder or a URI
    means = {k: float(sum(v for _, v in scalars[f"train/{k}"]) / max(len(scalars[f"train/{k}"]), 1))
             for k in ("loss", "loss_rec", "loss_pred", "loss_align")}
    typical = SemanticBank(pq.read_table(labels)).typical(data.train.column("user_id").to_numpy()).mean() if labels else 0.0
    metrics = {**run.metrics["train"], **means, "typical_fraction": float(typical), "world_size": job.ray.num_workers,
               "run": str(run.run_dir)}
    with atomic.staged(out, overwrite=True) as tmp, local_copy(locate(str(run.run_dir)) / "eimf") as exported:
        for f in Path(exported).iterdir():
            (tmp / f.name).write_bytes(f.read_bytes())
        (tmp / METRICS).write_text(json.dumps(metrics, indent=2, default=float) + "\n")
    model, _, _ = load_eimf(out)
    t0 = time.perf_counter()
    test = evaluate_retrieval(model, data.test, data.items, job.eimf.eval, return_rows=True)
    write_parquet_file(test.pop("rows"), out / "predictions_test.parquet")  # per-row results for `distrec compare`
    report = {
        "artefact": str(out),
        "prepared": str(data.folder),  # distrec predict rebuilds user histories from its interaction log
        "train": metrics,
        "train_wall_s": train_wall,
        "test": test,
        "eval_wall_s": time.perf_counter() - t0,
    }
    atomic.write_text(out / "report.json", json.dumps(report, indent=2, default=float) + "\n")
    return model, report


def labels_file(path: str | Path) -> Path:
    """``path`` as a Path; DataError when no labels table is there."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"labels table not found: {path}")
    return path



def run_train(job: JobConfig, labels_path: str | Path | None = None) -> dict:
    """``distrec eimf train``: one Ray Train run (ESIM when a labels table is given) + test metrics."""
    from distrec.train.launcher import loopback_env

    loopback_env(job.ray)
    data = load_data(job)
    labels = labels_file(labels_path) if labels_path is not None else None  # a missing file fails here, named
    _, report = train_stage(job, data, labels, "eimf" if labels is not None else "ibim")
    return report


def label_stage(job: JobConfig, model, data: EimfData, generate_fn=None, encoder=None) -> tuple[pa.Table, dict]:
    """Typical users (k-means on ``model``'s interests) -> LLM labels -> phrase vectors.

    Writes ``typical_users.parquet`` and ``labels.parquet`` in ``job.eimf.out_dir`` (each whole or
    not at all). ``generate_fn`` / ``encoder`` replace the LLM / ``job.eimf.encoder`` (see
    :func:`~distrec.interests.labelling.label_typical_users`)."""
    from distrec.data.storage import write_parquet_file
    from distrec.interests.labelling import label_typical_users
    from distrec.model.interests.eimf import SemanticBank
    from distrec.interests.typical_users import select_from_model
    from distrec.retrieval.encoders import make_encoder

    out = Path(job.eimf.out_dir)
    cfg = job.eimf
    t0 = time.perf_counter()
    selection = select_from_model(model, data.train, data.items, cfg.selection)
    write_parquet_file(selection.to_table(), out / "typical_users.parquet")
    select_s = time.perf_counter() - t0
    encoder = encoder or make_encoder(job.eimf.encoder).encode
    labels, stats = label_typical_users(selection, data.train, data.items, encoder, cfg.label,
                                        out_path=out / "labels.parquet", generate_fn=generate_fn)
    info = {
        "selected_users": len(selection),
        "selection_wall_s": select_s,
        **stats.to_dict(),
        "llm_calls": stats.n_users + stats.retried,  # one generation per prompt, one more per retry
        "labelled_users": labels.num_rows,
        "mean_interests": float(sum(map(len, labels.column("interests").to_pylist())) / max(labels.num_rows, 1)),
        "typical_train_fraction": float(SemanticBank(labels).typical(data.train.column("user_id").to_numpy()).mean()),
    }
    return labels, info


def run_label(job: JobConfig, model_path: str | Path, generate_fn=None, encoder=None) -> dict:
    """``distrec eimf label``: a trained backbone's typical users, labelled by the LLM.

    The staged alternative to :func:`run_experiment`: ``eimf train`` -> ``eimf label --model
    <out>/ibim`` (run once, e.g. on a GPU node) -> ``eimf train --labels <out>/labels.parquet``
    as often as needed. Returns the labelling statistics (also in ``labelling.json``)."""
    from distrec.model.interests.artefact import load_eimf
    from distrec.train.launcher import init_ray, loopback_env

    loopback_env(job.ray)
    model, _, _ = load_eimf(model_path, heads=False)
    data = load_data(job)
    Path(job.eimf.out_dir).mkdir(parents=True, exist_ok=True)
    init_ray(job.ray)
    _, info = label_stage(job, model, data, generate_fn, encoder)
    info["model"] = str(model_path)
    atomic.write_text(Path(job.eimf.out_dir) / "labelling.json", json.dumps(info, indent=2, default=float) + "\n")
    return info


def run_experiment(job: JobConfig, generate_fn=None, encoder=None) -> dict:
    """All stages (module doc); returns and writes ``results.json`` + ``results.md`` in ``out_dir``."""
    from distrec.eval.environment import run_environment
    from distrec.train.launcher import init_ray, loopback_env

    started = time.perf_counter()
    loopback_env(job.ray)
    out = Path(job.eimf.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_data(job)
    prepare_s = time.perf_counter() - t0
    init_ray(job.ray)
    ibim, ibim_report = train_stage(job, data, None, "ibim")
    _, label_info = label_stage(job, ibim, data, generate_fn, encoder)
    _, eimf_report = train_stage(job, data, out / "labels.parquet", "eimf")
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": {"machine": platform.machine(), "python": platform.python_version(),
                 **run_environment(config_loader.to_dict(job))},  # CPU, threads, versions, config hash
        "prepared": str(data.folder),
        "rows": {"train": data.train.num_rows, "test": data.test.num_rows, "items": data.items.num_rows},
        "job": config_loader.to_dict(job),
        "prepare_wall_s": prepare_s,
        "ibim": ibim_report,
        "labelling": label_info,
        "eimf": eimf_report,
        "total_wall_s": time.perf_counter() - started,
    }
    atomic.write_text(out / "results.md", results_markdown(results))
    atomic.write_text(out / "results.json", json.dumps(results, indent=2, default=float) + "\n")
    return results


def results_markdown(results: dict) -> str:
    """The comparison table and the cost of the LLM stage, as Markdown."""
    ks = results["job"]["eimf"]["eval"]["ks"]
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg", "hr")]
    bb = results["job"]["eimf"]["backbone"]
    name = {"sa": "ComiRec-SA", "dr": "ComiRec-DR"}[bb["kind"]]
    lines = [
        "| Model | " + " | ".join(c.replace("recall", "Recall").replace("ndcg", "NDCG").replace("hr", "HR") for c in cols)
        + " | train wall s |",
        "|---" * (len(cols) + 2) + "|",
    ]
    rows = [(f"IBIM ({name}) alone", results["ibim"]), ("EIMF (IBIM + ESIM)", results["eimf"])]
    for label, rep in rows:
        lines.append(f"| {label} | " + " | ".join(f"{rep['test'][c]:.4f}" for c in cols) + f" | {rep['train_wall_s']:.1f} |")
    diff = [results["eimf"]["test"][c] - results["ibim"]["test"][c] for c in cols]
    lines.append("| Δ (EIMF − IBIM) | " + " | ".join(f"{d:+.4f}" for d in diff) + " | |")
    lab = results["labelling"]
    lines += [
        "",
        f"Test samples: {results['ibim']['test']['n']} (full catalogue of {results['rows']['items']} items); "
        f"train samples: {results['rows']['train']}.",
        f"Typical users: {lab['selected_users']} selected, {lab['labelled_users']} labelled "
        f"({lab['retried']} retried, {lab['dropped']} dropped), mean {lab['mean_interests']:.2f} interests each; "
        f"their samples are {100 * lab['typical_train_fraction']:.1f}% of train.",
        f"LLM ({results['job']['eimf']['label']['model']}): {lab['llm_calls']} generations, "
        f"{lab['llm_time_s']:.1f} actor-s generating, labelling stage wall {lab['wall_time_s']:.1f} s "
        f"(encode {lab['encode_time_s']:.1f} s).",
        f"Wall: prepare {results['prepare_wall_s']:.1f} s, IBIM train {results['ibim']['train_wall_s']:.1f} s, "
        f"selection {lab['selection_wall_s']:.1f} s, labelling {lab['wall_time_s']:.1f} s, "
        f"EIMF train {results['eimf']['train_wall_s']:.1f} s, total {results['total_wall_s']:.1f} s.",
        "",
    ]
    return "\n".join(lines)


__all__ = ["eimf_job", "load_data", "load_eimf_job", "results_markdown", "run_experiment", "run_train"]
