"""Rows/s of ``distrec predict`` (CTR) with 1 and 2 actors next to the evaluation inside ``distrec train``.

One LoRA CTR run on ML-100K (trained here for a few steps; ``--model`` tiny or smollm2-135m),
then, on the same test rows and the same model:

- ``distrec eval --run``: Ray Train + 2 DeepSpeed ZeRO-3 workers re-evaluate the test split,
  the evaluation ``distrec train`` runs at its end; rate over its wall time (worker start-up
  and ZeRO-3 initialisation included);
- ``distrec predict`` with 1 and 2 actors (each one model copy, one CPU), and with 1 actor and
  ``--share-prefix`` (each batch's common prompt prefix once): rate over the call's wall time and
  over the time its actors spent scoring.

Appends a block to RESULTS.md with ``--record``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> str:
    import pyarrow.parquet as pq

    from distrec.config import load_job_config
    from distrec.data import storage
    from benchhost import describe_host, publish
    from distrec.predict.driver import predict
    from distrec.predict.pipeline import MANIFEST, PredictOptions
    from distrec.train.artefacts import ensure_prepared
    from distrec.train.launcher import run_job
    from distrec.eval.tensorboard import read_scalars

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny or smollm2-135m")
    parser.add_argument("--rows", type=int, default=1024, help="test rows to score")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--record", action="store_true", help="append the table to RESULTS.md")
    args = parser.parse_args(argv)

    root = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    overrides = [f"ray.storage_path={root}", "ray.run_name=bench", f"model.name_or_path={args.model}",
                 f"data.test_size={args.rows}", f"eval.batch_size={args.batch_size}", "train.max_steps=2"]
    job = load_job_config(REPO / "jobs" / "tiny.yaml", overrides)
    run = run_job(job).run_dir
    rows = storage.open_split(ensure_prepared(job), "test").select(["sample_id", "user_id", "item_id", "timestamp"])
    pq.write_table(rows, root / "rows.parquet")
    n = rows.num_rows

    started = time.perf_counter()
    run_job(load_job_config(run / "config_train.yaml"), mode="eval", run_dir=run)
    eval_s = time.perf_counter() - started
    loop = read_scalars(run / "tensorboard")["throughput/eval_test_rows_per_s"][-1][1]
    lines = [f"| `distrec eval` (Ray Train, 2 ZeRO-3 workers) | {n} | 2 | {eval_s:.1f} | {n / eval_s:.1f} | "
             f"{loop:.1f} (eval loop) | 1.00× |"]
    for actors, shared in ((1, False), (2, False), (1, True)):
        out = root / f"scored-{actors}{'-shared' if shared else ''}"
        started = time.perf_counter()
        predict(str(run), str(root / "rows.parquet"), str(out),
                PredictOptions(actors=actors, chunk_rows=max(64, n // (4 * actors)), progress=False),
                batch_size=args.batch_size, overrides=["train.share_prefix=true"] if shared else [])
        wall = time.perf_counter() - started
        manifest = json.loads((out / MANIFEST).read_text())
        steady = n / max(manifest["scoring_s"] / actors, 1e-9)
        lines.append(f"| `distrec predict{' --share-prefix' if shared else ''}` | {n} | {actors} | {wall:.1f} | "
                     f"{n / wall:.1f} | {steady:.1f} (scoring) | {eval_s / wall:.2f}× |")
    host = describe_host()
    block = "\n".join([
        f"\n## distrec predict throughput (CTR) — {datetime.datetime.now().isoformat(timespec='minutes')}\n",
        f"- Device: {host}",
        f"- Settings: {args.model}, LoRA CTR on ML-100K, {n} test rows, batch {args.batch_size}, fp32, CPU; "
        "each predict actor 1 CPU (one model copy), eval workers 1 CPU each",
        f"- Command: `python jobs/bench/predict_throughput.py {shlex.join(argv or sys.argv[1:])}`",
        "- wall = the whole call (driver set-up, start-up of Ray workers/actors, model load, scoring, writes); "
        "steady = rows over the time spent scoring (predict: summed task seconds / actors; eval: the loop's "
        "`throughput/eval_test_rows_per_s`)\n",
        "| path | rows | workers/actors | wall s | rows/s (wall) | rows/s (steady) | wall speed vs eval |",
        "|---|---|---|---|---|---|---|",
        *lines,
    ])
    return publish(block, args.record, RESULTS)


if __name__ == "__main__":
    main()
