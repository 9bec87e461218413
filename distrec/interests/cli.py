"""``distrec eimf``: train IBIM (+ ESIM) under Ray Train, label typical users, or run the whole EIMF comparison.

``eimf_app`` is a Typer sub-app; ``distrec/cli.py`` mounts it as ``distrec eimf``. Errors
distrec raises on purpose (bad key, missing file, bad data) print one line and exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from distrec.errors import DistrecError

eimf_app = typer.Typer(
    help="EIMF: multi-interest recommender (IBIM) taught by LLM-named interests of typical users (ESIM).",
    no_args_is_help=True,
)

CONFIG_HELP = "EIMF job YAML (jobs/eimf_ml100k.yaml, jobs/eimf_gpu.yaml)."
OVERRIDES_HELP = "key=value overrides, e.g. eimf.train.epochs=2 ray.num_workers=1 out_dir=runs/x"


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@eimf_app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
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


@eimf_app.command()
def label(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
    model: Path = typer.Option(..., "--model", "-m", help="A trained backbone folder, e.g. <out_dir>/ibim from `eimf train`."),
) -> None:
    """Pick the backbone's typical users and have the LLM name their interests -> out_dir/labels.parquet."""
    from distrec.interests.pipeline import load_eimf_job, run_label

    try:
        job = load_eimf_job(config, overrides or [])
        info = run_label(job, model)
    except DistrecError as exc:
        _fail(exc)
    typer.echo(json.dumps({"labels": str(Path(job.out_dir) / "labels.parquet"), **info}, indent=2, default=float))


@eimf_app.command()
def experiment(
    config: Path = typer.Option(..., "--config", "-c", help=CONFIG_HELP),
    overrides: Optional[List[str]] = typer.Argument(None, help=OVERRIDES_HELP),
) -> None:
    """IBIM alone vs IBIM + ESIM on the same data/seed/budget; writes results.md and results.json."""
    from distrec.interests.pipeline import load_eimf_job, run_experiment

    try:
        job = load_eimf_job(config, overrides or [])
        run_experiment(job)
    except DistrecError as exc:
        _fail(exc)
    typer.echo((Path(job.out_dir) / "results.md").read_text())


if __name__ == "__main__":  # python -m distrec.interests.cli experiment --config ...
    eimf_app()
