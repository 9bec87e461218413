"""IBIM alone vs IBIM + ESIM over several training seeds; prints the per-seed rows and Δ's mean ± sd.

    .venv/bin/python jobs/experiments/eimf_seeds.py [--config jobs/eimf_ml100k.yaml]
        [--seeds 42,43,44,45,46] [--out runs/eimf-seeds] [key=value ...]

Each seed is one ``distrec eimf experiment`` (``eimf.train.seed=<s>``, ``out_dir=<out>/seed<s>``);
a seed whose ``results.json`` already exists there is read, not re-run. The typical-user
selection seed (``eimf.selection.seed``) stays as configured, so the seeds vary the training
initialisation, batch order and negatives of both rows alike. One seed's Δ is noisy: the two
rows share a test set, but a few LLM phrases changing by one character moved Recall@20 by 0.01.
The table goes to stdout and to ``<out>/seeds.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

METRICS = ("recall@20", "ndcg@20", "recall@50", "ndcg@50")


def seed_results(config: str, overrides: list[str], seed: int, out: Path) -> dict:
    """``results.json`` of one seed's experiment, running it when it is not there yet."""
    folder = out / f"seed{seed}"
    if (folder / "results.json").is_file():
        return json.loads((folder / "results.json").read_text())
    from distrec.interests.pipeline import load_eimf_job, run_experiment

    job = load_eimf_job(config, [*overrides, f"eimf.train.seed={seed}", f"out_dir={folder}"])
    return run_experiment(job)


def table(results: dict[int, dict]) -> str:
    """Per seed: both rows' metrics, Δ, LLM calls and time; then Δ's mean ± sd over seeds."""
    head = ["seed", "model", *METRICS, "LLM calls", "LLM actor-s", "total wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    deltas: dict[str, list[float]] = {m: [] for m in METRICS}
    for seed, r in sorted(results.items()):
        ibim, eimf, lab = r["ibim"]["test"], r["eimf"]["test"], r["labelling"]
        lines.append(f"| {seed} | IBIM alone | " + " | ".join(f"{ibim[m]:.4f}" for m in METRICS) + " | | | |")
        lines.append(f"| {seed} | IBIM + ESIM | " + " | ".join(f"{eimf[m]:.4f}" for m in METRICS)
                     + f" | {lab['llm_calls']} | {lab['llm_time_s']:.1f} | {r['total_wall_s']:.0f} |")
        for m in METRICS:
            deltas[m].append(eimf[m] - ibim[m])
    if len(results) > 1:
        cells = [f"{statistics.mean(d):+.4f} ± {statistics.stdev(d):.4f}" for d in deltas.values()]
        lines.append(f"| all {len(results)} | Δ mean ± sd | " + " | ".join(cells) + " | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="jobs/eimf_ml100k.yaml")
    parser.add_argument("--seeds", default="42,43,44,45,46", help="comma list of training seeds")
    parser.add_argument("--out", default="runs/eimf-seeds", help="one seed<N>/ folder per seed under this")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {s: seed_results(args.config, args.overrides, s, out) for s in seeds}
    text = table(results)
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "seeds.md").write_text(f"config: {args.config} {' '.join(args.overrides)}\n\n{text}\n")
    return text


if __name__ == "__main__":
    main()
