"""The ReLLaX ablation on one config: DIN, LoRA + recent-K, + SUBR (ReLLa), + SPA, + CFLoRA (ReLLaX).

    .venv/bin/python jobs/experiments/rellax_ablation.py [--config jobs/ml100k_rellax.yaml] [key=value ...]

Every LLM row trains on the same few-shot subset with the same seed and budget and is scored
on the same fixed test subset; the DIN row is the CRM the SPA/CFLoRA rows read (trained on the
full training split, as in ReLLaX), scored on that same test subset. The table goes to stdout
and to ``<storage>/rellax_ablation.md``.
"""

from __future__ import annotations

import argparse
import time

LORA = ["adapter.kind=lora", "spa.enabled=false"]
ROWS = {
    "LoRA + recent-K (TALLRec)": [*LORA, "subr.enabled=false"],
    "LoRA + SUBR (ReLLa)": [*LORA, "subr.enabled=true"],
    "+ SPA": ["adapter.kind=lora", "spa.enabled=true", "subr.enabled=true"],
    "+ CFLoRA (ReLLaX)": ["adapter.kind=cflora", "adapter.cflora.mode=generated", "spa.enabled=true",
                          "subr.enabled=true"],
}
HEADER = ["AUC", "LogLoss", "UAUC", "test rows", "wall time (s)"]


def din_row(config: str, overrides: list[str]) -> str:
    """Train (or reuse) the job's DIN and score it on the job's test subset."""
    from distrec.config import load_job_config
    from distrec.model.crm.train_din import evaluate_split, load_din
    from distrec.train.artefacts import ensure_crm, ensure_prepared

    job = load_job_config(config, overrides)
    started = time.perf_counter()
    folder = ensure_crm(job)
    seconds = time.perf_counter() - started
    m = evaluate_split(load_din(folder), ensure_prepared(job), "test")
    return (f"| DIN (CRM, full train split) | {m['auc']:.4f} | {m['logloss']:.4f} | {m['uauc']:.4f} | "
            f"{m['n']} | {seconds:.0f} (training; reused if cached) |")


def main(argv: list[str] | None = None) -> str:
    from table_runs import ROWS_HELP, pick_rows, run_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/ml100k_rellax.yaml")
    parser.add_argument("--rows", default=None, help=ROWS_HELP + "; the DIN row always runs")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)

    def cells(_row, result) -> list[str]:
        m = result.metrics["test"]
        return [f"{m['auc']:.4f}", f"{m['logloss']:.4f}", f"{m['uauc']:.4f}", str(m.get("n", "")),
                f"{result.elapsed_s:.0f}"]

    din = din_row(args.config, args.overrides)
    table, storage = run_rows(args.config, args.overrides, pick_rows(ROWS, args.rows), HEADER, cells, "rellax-ablation")
    lines = table.split("\n")
    table = "\n".join([*lines[:2], din, *lines[2:]])
    print(table)
    (storage / "rellax_ablation.md").write_text(f"config: {args.config} {' '.join(args.overrides)}\n\n{table}\n")
    return table


if __name__ == "__main__":
    main()
