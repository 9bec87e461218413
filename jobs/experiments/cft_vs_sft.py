"""SFT vs CFT on the same data, seed and budget; prints and saves the HR@K / NDCG@K table.

    .venv/bin/python jobs/experiments/cft_vs_sft.py [--config jobs/ml100k_cft.yaml] [key=value ...]

Rows (overrides of the config): SFT (λ = 0, uniform weights); CFT (λ = 0.1, β = 0.25);
"λ = 0" (token-weighted SFT, β = 0.25); "λ = 0, β = 1" (must reduce to plain SFT).
The table goes to stdout and to ``<storage>/cft_vs_sft.md``.
"""

from __future__ import annotations

import argparse

ROWS = {
    "SFT": ["cft.lam=0", "cft.weight_rule=uniform"],
    "CFT (λ=0.1, β=0.25)": ["cft.lam=0.1", "cft.beta=0.25"],
    "λ=0 (weighted SFT, β=0.25)": ["cft.lam=0", "cft.beta=0.25"],
    "λ=0, β=1 (= SFT)": ["cft.lam=0", "cft.beta=1.0"],
}


KEYS = ("hr@1", "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "loss")


def main(argv: list[str] | None = None) -> str:
    from table_runs import ROWS_HELP, pick_rows, run_rows

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/ml100k_cft.yaml")
    parser.add_argument("--rows", default=None, help=ROWS_HELP)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    rows = pick_rows(ROWS, args.rows)

    def cells(_row, result) -> list[str]:
        m = result.metrics["test"]
        return [f"{m[k]:.4f}" for k in KEYS] + [f"{result.elapsed_s:.0f}"]

    header = ["HR@1", "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "test L_n", "run time (s)"]
    table, storage = run_rows(args.config, args.overrides, rows, header, cells, "cft-vs-sft")
    (storage / "cft_vs_sft.md").write_text(f"config: {args.config} {' '.join(args.overrides)}\n\n{table}\n")
    return table


if __name__ == "__main__":
    main()
