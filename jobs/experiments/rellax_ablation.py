"""The ReLLaX ablation on one config: DIN, LoRA + recent-K, + SUBR (ReLLa), + SPA, + CFLoRA (ReLLaX).

    .venv/bin/python jobs/experiments/rellax_ablation.py [--config jobs/ml100k_rellax.yaml]
        [--rows 1,2,3,4] [--seeds 42,43] [--resamples 2000] [key=value ...]

Every LLM row trains on the same few-shot subset with the same budget and is scored on the same
fixed test subset, once per training seed (``train.seed``); the DIN row is the CRM the
SPA/CFLoRA rows read (trained on the full training split, as in ReLLaX), scored on that same
test subset. Printed and saved to ``<storage>/rellax_ablation.md``:

1. every run's AUC, LogLoss and UAUC with 95 % intervals (bootstrap over users);
2. with several seeds, each row's mean ± sd over seeds next to one run's interval half-width;
3. each row against its ablation baseline (the row above it; ReLLaX also against the DIN), per
   seed: Δ with its paired-bootstrap interval and p-value, and DeLong's p for AUC;
4. how many of those differences have an interval that excludes 0.

Finished runs are reused and interrupted ones resumed (see ``table_runs.py``), so rows and seeds
can be added over several invocations.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling helpers when loaded as a module

LORA = ["adapter.kind=lora", "spa.enabled=false"]
ROWS = {
    "LoRA + recent-K (TALLRec)": [*LORA, "subr.enabled=false"],
    "LoRA + SUBR (ReLLa)": [*LORA, "subr.enabled=true"],
    "+ SPA": ["adapter.kind=lora", "spa.enabled=true", "subr.enabled=true"],
    "+ CFLoRA (ReLLaX)": ["adapter.kind=cflora", "adapter.cflora.mode=generated", "spa.enabled=true",
                          "subr.enabled=true"],
}
DIN = "DIN (CRM, full train split)"
BASELINES = [
    ("LoRA + SUBR (ReLLa)", "LoRA + recent-K (TALLRec)"),
    ("+ SPA", "LoRA + SUBR (ReLLa)"),
    ("+ CFLoRA (ReLLaX)", "+ SPA"),
    ("+ CFLoRA (ReLLaX)", DIN),
]
"""(row, its ablation baseline): each row adds one part to the row above; ReLLaX also meets its CRM."""
KEYS, NAMES = ("auc", "logloss", "uauc"), ("AUC", "LogLoss", "UAUC")


def din_run(config: str, overrides: list[str], seed: int | None) -> tuple[Path, dict, float]:
    """Train (or reuse) the job's DIN; score it on the job's test subset once, saving per-row results.

    Returns ``(folder with predictions_test.parquet, test metrics with intervals, training s)``;
    the folder ``<storage>/rellax-ablation-din-<digest>`` is keyed by the DIN and the test data.
    """
    import pyarrow as pa

    from distrec.config import load_job_config
    from distrec.data import storage
    from distrec.data.storage import write_parquet_file
    from distrec.metrics.ctr_metrics import ctr_metrics
    from distrec.eval.intervals import ctr_intervals
    import torch

    from distrec.model.crm.artefact import load_din
    from distrec.model.crm.history import history_matrix
    from distrec.train.artefacts import ensure_crm, ensure_prepared

    from table_runs import seed_overrides

    job = load_job_config(config, [*overrides, *seed_overrides(seed)])
    started = time.perf_counter()
    crm = ensure_crm(job)
    seconds = time.perf_counter() - started
    prepared = ensure_prepared(job)
    digest = hashlib.sha256(f"{crm.resolve()}|{Path(prepared).resolve()}".encode()).hexdigest()[:12]
    folder = Path(job.ray.storage_path) / f"rellax-ablation-din-{digest}"
    metrics_file = folder / "metrics_test.json"
    if metrics_file.is_file():
        return folder, json.loads(metrics_file.read_text()), seconds
    model = load_din(crm)
    table = storage.open_split(Path(prepared), "test")
    ids, mask = history_matrix(table, model.config.hist_len, model.config.history)
    with torch.no_grad():
        logit, _ = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(table.column("item_id").to_numpy()))
    probs = torch.sigmoid(logit).numpy().astype("float32")
    columns = {"sample_id": table.column("sample_id").to_numpy(), "user_id": table.column("user_id").to_numpy(),
               "label": table.column("label").to_numpy().astype("int8"), "p_yes": probs}
    write_parquet_file(pa.table(columns), folder / "predictions_test.parquet")
    metrics = {**ctr_metrics(columns["label"], probs, columns["user_id"]),
               **ctr_intervals(columns["label"], probs, columns["user_id"])}
    metrics_file.write_text(json.dumps(metrics, indent=2) + "\n")
    return folder, metrics, seconds


def main(argv: list[str] | None = None) -> str:
    from paired_tables import comparison_table, compare_pairs, reading, runs_table, seeds_table
    from table_runs import ROWS_HELP, SEEDS_HELP, parse_seeds, pick_rows, run_grid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/ml100k_rellax.yaml")
    parser.add_argument("--rows", default=None, help=ROWS_HELP + "; the DIN row always runs")
    parser.add_argument("--seeds", default=None, help=SEEDS_HELP)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates of each comparison")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    rows = pick_rows(ROWS, args.rows)

    dins = {seed: din_run(args.config, args.overrides, seed) for seed in seeds}
    runs = run_grid(args.config, args.overrides, rows, seeds, "rellax-ablation")

    def metrics_of(row: str, seed) -> dict:
        return dins[seed][1] if row == DIN else runs[(row, seed)].metrics["test"]

    def dir_of(row: str, seed) -> Path:
        return dins[seed][0] if row == DIN else Path(runs[(row, seed)].run_dir)

    first_of_din = {dins[seed][0]: seed for seed in reversed(seeds)}  # one line per distinct DIN
    listed = [(DIN, seed, dins[seed][1], [str(dins[seed][1]["n"]), f"{dins[seed][2]:.0f} (DIN training; reused if cached)"])
              for seed in seeds if first_of_din[dins[seed][0]] == seed]
    listed += [(row, seed, metrics_of(row, seed), [str(metrics_of(row, seed).get("n", "")),
                                                   f"{runs[(row, seed)].elapsed_s:.0f}"])
               for seed in seeds for row in rows]
    parts = [runs_table(listed, KEYS, NAMES, ["test rows", "wall time (s)"])]
    names = [DIN, *rows]
    if len(seeds) > 1:
        parts.append(seeds_table(names, seeds, metrics_of, KEYS, NAMES))
    pairs = [(row, base) for row, base in BASELINES if row in names and base in names]
    comparisons = compare_pairs(pairs, seeds, dir_of, n_resamples=args.resamples)
    if comparisons:
        parts.append(comparison_table(comparisons, KEYS, NAMES))
        parts.append("\n".join(reading(comparisons, KEYS, NAMES)))
    text = "\n\n".join(parts)
    print(text)
    storage = Path(runs[next(iter(runs))].run_dir).parents[1] if runs else Path(".")
    (storage / "rellax_ablation.md").write_text(f"config: {args.config} {' '.join(args.overrides)}; "
                                                f"seeds: {args.seeds or 'config'}\n\n{text}\n")
    return text


if __name__ == "__main__":
    main()
