"""IBIM alone vs IBIM + ESIM over several training seeds; per-seed rows, Δ's mean ± sd, paired tests.

    .venv/bin/python jobs/experiments/eimf_seeds.py [--config jobs/eimf_ml100k.yaml]
        [--seeds 42,43,44,45,46] [--out runs/eimf-seeds] [--resamples 2000] [key=value ...]

Each seed is one ``distrec eimf experiment`` (``eimf.train.seed=<s>``, ``eimf.out_dir=<out>/seed<s>``);
a seed whose ``results.json`` already exists there is read, not re-run. The typical-user
selection seed (``eimf.selection.seed``) stays as configured, so the seeds vary the training
initialisation, batch order and negatives of both rows alike. One seed's Δ is noisy: the two
rows share a test set, but a few LLM phrases changing by one character moved Recall@20 by 0.01.
Each metric shows its 95 % interval (bootstrap over users) when the run recorded one. A second
table compares IBIM + ESIM with IBIM alone per seed on the same test samples: Δ with its
paired-bootstrap interval and p-value (:func:`distrec.eval.compare.compare_runs` on
``seed<s>/ibim`` and ``seed<s>/eimf``, whose ``predictions_test.parquet`` runs write since
issue 19; older seed folders have none and are named instead). The tables go to stdout and to
``<out>/seeds.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling helpers when loaded as a module

METRICS = ("recall@20", "ndcg@20", "recall@50", "ndcg@50")
PAIRED_NAMES = ("Recall@20", "NDCG@20", "Recall@50", "NDCG@50")


def seed_results(config: str, overrides: list[str], seed: int, out: Path) -> dict:
    """``results.json`` of one seed's experiment, running it when it is not there yet."""
    folder = out / f"seed{seed}"
    if (folder / "results.json").is_file():
        return json.loads((folder / "results.json").read_text())
    from distrec.interests.pipeline import load_eimf_job, run_experiment

    job = load_eimf_job(config, [*overrides, f"eimf.train.seed={seed}", f"eimf.out_dir={folder}"])
    return run_experiment(job)


def table(results: dict[int, dict]) -> str:
    """Per seed: both rows' metrics (with intervals when recorded), LLM calls and time; then Δ's mean ± sd."""
    from paired_tables import with_ci

    head = ["seed", "model", *METRICS, "LLM calls", "LLM actor-s", "total wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    deltas: dict[str, list[float]] = {m: [] for m in METRICS}
    for seed, r in sorted(results.items()):
        ibim, eimf, lab = r["ibim"]["test"], r["eimf"]["test"], r["labelling"]
        lines.append(f"| {seed} | IBIM alone | " + " | ".join(with_ci(ibim, m) for m in METRICS) + " | | | |")
        lines.append(f"| {seed} | IBIM + ESIM | " + " | ".join(with_ci(eimf, m) for m in METRICS)
                     + f" | {lab['llm_calls']} | {lab['llm_time_s']:.1f} | {r['total_wall_s']:.0f} |")
        for m in METRICS:
            deltas[m].append(eimf[m] - ibim[m])
    if len(results) > 1:
        cells = [f"{statistics.mean(d):+.4f} ± {statistics.stdev(d):.4f}" for d in deltas.values()]
        lines.append(f"| all {len(results)} | Δ mean ± sd | " + " | ".join(cells) + " | | | |")
    return "\n".join(lines)


def paired(out: Path, seeds: list[int], n_resamples: int) -> str:
    """IBIM + ESIM vs IBIM alone per seed (paired, same test samples), then the reading."""
    from paired_tables import comparison_table, compare_pairs, reading

    from distrec.eval.compare import predictions_path
    from distrec.errors import DataError

    ready, missing = [], []
    for seed in seeds:
        try:
            for stage in ("ibim", "eimf"):
                predictions_path(out / f"seed{seed}" / stage)
            ready.append(seed)
        except DataError:
            missing.append(seed)
    lines = []
    if ready:
        comparisons = compare_pairs([("IBIM + ESIM", "IBIM alone")], ready,
                                    lambda row, seed: out / f"seed{seed}" / ("eimf" if row == "IBIM + ESIM" else "ibim"),
                                    n_resamples=n_resamples)
        lines += [comparison_table(comparisons, METRICS, PAIRED_NAMES), "", *reading(comparisons, METRICS, PAIRED_NAMES)]
    if missing:
        lines += ["", f"No per-row results (run before issue 19) for seeds {missing}: re-run them with another --out "
                      "to compare them paired."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/eimf_ml100k.yaml")
    parser.add_argument("--seeds", default="42,43,44,45,46", help="comma list of training seeds")
    parser.add_argument("--out", default="runs/eimf-seeds", help="one seed<N>/ folder per seed under this")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates of each comparison")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {s: seed_results(args.config, args.overrides, s, out) for s in seeds}
    text = table(results) + "\n\n" + paired(out, seeds, args.resamples)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.md").write_text(f"config: {args.config} {' '.join(args.overrides)}\n\n{text}\n")
    return text


if __name__ == "__main__":
    main()
