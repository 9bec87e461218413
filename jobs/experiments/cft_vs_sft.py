"""SFT vs CFT on the same data, seed and budget; prints and saves the HR@K / NDCG@K tables.

    .venv/bin/python jobs/experiments/cft_vs_sft.py [--config jobs/ml100k_cft.yaml]
        [--rows 1,2,3,4] [--seeds 42,43] [--resamples 2000] [key=value ...]

Rows (overrides of the config): SFT (λ = 0, uniform weights); CFT (λ = 0.1, β = 0.25);
"λ = 0" (token-weighted SFT, β = 0.25); "λ = 0, β = 1" (must reduce to plain SFT). Each row
runs once per training seed. The tables (every run with 95 % intervals over users; mean ± sd
over seeds; each row against SFT, paired, per seed) go to stdout and to
``<storage>/cft_vs_sft.md``. Finished runs are reused (see ``table_runs.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling helpers when loaded as a module

ROWS = {
    "SFT": ["cft.lam=0", "cft.weight_rule=uniform"],
    "CFT (λ=0.1, β=0.25)": ["cft.lam=0.1", "cft.beta=0.25"],
    "λ=0 (weighted SFT, β=0.25)": ["cft.lam=0", "cft.beta=0.25"],
    "λ=0, β=1 (= SFT)": ["cft.lam=0", "cft.beta=1.0"],
}
BASELINE = "SFT"
"""Every other row is compared with SFT; the λ = 0, β = 1 row must come out Δ = 0, p = 1."""

KEYS = ("hr@1", "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20")
NAMES = ("HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")
PAIRED = ("hr@10", "ndcg@10", "hr@20", "ndcg@20")
"""Metrics of the paired comparison table (the others are in the per-run table)."""


def main(argv: list[str] | None = None) -> str:
    from paired_tables import comparison_table, compare_pairs, fmt, reading, runs_table, seeds_table
    from table_runs import ROWS_HELP, SEEDS_HELP, parse_seeds, pick_rows, run_grid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/ml100k_cft.yaml")
    parser.add_argument("--rows", default=None, help=ROWS_HELP)
    parser.add_argument("--seeds", default=None, help=SEEDS_HELP)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates of each comparison")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    rows = pick_rows(ROWS, args.rows)
    runs = run_grid(args.config, args.overrides, rows, seeds, "cft-vs-sft")

    def metrics_of(row: str, seed) -> dict:
        return runs[(row, seed)].metrics["test"]

    listed = [(row, seed, metrics_of(row, seed), [fmt(metrics_of(row, seed)["loss"]), f"{runs[(row, seed)].elapsed_s:.0f}"])
              for seed in seeds for row in rows]
    parts = [runs_table(listed, KEYS, NAMES, ["test L_n", "run time (s)"])]
    paired_names = [NAMES[KEYS.index(k)] for k in PAIRED]
    if len(seeds) > 1:
        parts.append(seeds_table(list(rows), seeds, metrics_of, PAIRED, paired_names))
    pairs = [(row, BASELINE) for row in rows if row != BASELINE and BASELINE in rows]
    comparisons = compare_pairs(pairs, seeds, lambda row, seed: Path(runs[(row, seed)].run_dir), n_resamples=args.resamples)
    if comparisons:
        parts.append(comparison_table(comparisons, PAIRED, paired_names))
        parts.append("\n".join(reading(comparisons, PAIRED, paired_names)))
    text = "\n\n".join(parts)
    print(text)
    storage = Path(runs[next(iter(runs))].run_dir).parents[1]
    (storage / "cft_vs_sft.md").write_text(f"config: {args.config} {' '.join(args.overrides)}; "
                                           f"seeds: {args.seeds or 'config'}\n\n{text}\n")
    return text


if __name__ == "__main__":
    main()
