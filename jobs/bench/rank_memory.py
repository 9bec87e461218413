"""Per-rank peak host memory of the training data path at 10^5 / 10^6 (/ 10^7) tokenised CTR samples.

Synthetic token shards in the token cache's layout (Arrow IPC, ``list<int32>`` token ids,
``BATCH_ROWS``-row record batches, 100k rows a file; prompt lengths 150-350 tokens, 64-item histories, as ML-scale ReLLa CTR
prompts) are written once per size. Then, each case in a fresh process (so ``ru_maxrss`` is
its own), rank 0 of 2 runs ``--steps`` optimiser steps of ``train_micro_batches`` (micro 4 x
accumulation 2) and left-pads every micro-batch into tensors, as the loop does:

- ``shards`` (today): :class:`~distrec.train.row_source.ShardRows`, the rank's rows read a record
  batch at a time;
- ``whole split`` (the design before): the whole split decoded into the process first, as
  ``load_rows`` pulled it from Ray Data into every worker.

Evaluation (``--designs eval,eval tuples``): rank 0 of 2 streams its half of the split through
``eval_batches`` (16 rows a forward) with a stand-in score in place of the model, then holds what
rank 0 holds for the metrics: both ranks' predictions.

- ``eval`` (today): each batch packed into typed columns (``objectives.tasks.pack_rows``,
  21 bytes a CTR row), gathered to rank 0 only, sorted by sample id;
- ``eval tuples`` (the design before): Python tuples per row, gathered to every rank, a dict
  to deduplicate and an object array to sort.

The model adds the same memory to every design; this measures what differs. Appends a block to
RESULTS.md with ``--record``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
REPO = Path(__file__).resolve().parents[2]


def write_shards(folder: Path, n: int, seed: int = 0) -> list[str]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from distrec.train.row_source import BATCH_ROWS_KEY
    from distrec.train.token_cache import BATCH_ROWS, ROWS_PER_FILE

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    for lo in range(0, n, ROWS_PER_FILE):
        m = min(ROWS_PER_FILE, n - lo)
        lengths = rng.integers(150, 351, size=m)
        offsets = np.zeros(m + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        hist_off = np.arange(m + 1, dtype=np.int32) * 64
        table = pa.table({
            "sample_id": np.arange(lo, lo + m, dtype=np.int64),
            "user_id": rng.integers(0, 162_000, size=m),
            "item_id": rng.integers(0, 59_000, size=m),
            "label": rng.integers(0, 2, size=m).astype(np.int8),
            "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(rng.integers(0, 49_152, size=int(offsets[-1]), dtype=np.int32))),
            "history_item_ids": pa.ListArray.from_arrays(pa.array(hist_off), pa.array(rng.integers(0, 59_000, size=m * 64))),
            "n_truncated": np.zeros(m, dtype=np.int32),
        })
        files.append(str(folder / f"part-{len(files):05d}.arrow"))
        table = table.replace_schema_metadata({BATCH_ROWS_KEY: str(BATCH_ROWS).encode()})  # the cache's layout
        with pa.OSFile(files[-1], "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=BATCH_ROWS)
    return files


def run_case(files: list[str], design: str, steps: int) -> dict:
    """One case in this process: peak RSS (MiB) and micro-batch rows/s."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from distrec.data.batching import left_pad
    from distrec.train.data_stream import train_micro_batches
    from distrec.train.row_source import ShardRows, column_to_numpy

    from distrec.train.monitor import peak_memory_bytes

    before = peak_memory_bytes()["host_peak_rss"] / 2**20
    if design.startswith("eval"):
        return _eval_case(files, design, before)
    started = time.perf_counter()
    if design == "shards":
        rows = ShardRows(files)
    else:
        table = pa.concat_tables([ipc.open_file(pa.OSFile(f)).read_all() for f in files])
        rows = {name: column_to_numpy(table.column(name)) for name in table.column_names}
        del table
    loaded = time.perf_counter() - started
    started, n = time.perf_counter(), 0
    for step, micro_batches in enumerate(train_micro_batches(rows, 0, 2, 4, 2, 42, 0, 0)):
        for mb in micro_batches:
            left_pad(mb["input_ids"], 0)
            n += len(mb["sample_id"])
        if step + 1 >= steps:
            break
    rate = n / (time.perf_counter() - started)
    peak = peak_memory_bytes()["host_peak_rss"] / 2**20  # VmHWM: ru_maxrss would carry the parent's peak
    return {"peak_rss_mib": peak, "baseline_rss_mib": before, "load_s": loaded, "rows_per_s": rate, "steps": steps}


def _eval_case(files: list[str], design: str, before: float) -> dict:
    """Rank 0 of 2 evaluating the whole split: peak RSS (MiB) and rows/s of the streaming part."""
    import numpy as np

    from distrec.objectives.tasks import CTR_COLUMNS, pack_rows
    from distrec.train.data_stream import eval_batches
    from distrec.train.monitor import peak_memory_bytes
    from distrec.train.row_source import ShardRows

    rows = ShardRows(files)
    started = time.perf_counter()
    own: list = []
    for batch, n_real in eval_batches(rows, 0, 2, 16):
        ids = batch["sample_id"][:n_real]
        scored = list(zip(ids.tolist(), batch["user_id"][:n_real].tolist(), batch["label"][:n_real].tolist(),
                          ((ids * 2654435761) % 1000 / 1000.0).tolist()))
        if design == "eval":
            own.append(pack_rows(scored, CTR_COLUMNS))
        else:
            own.extend(scored)
    rate = len(rows) / 2 / (time.perf_counter() - started)
    if design == "eval":
        mine = np.concatenate(own)
        other = mine.copy()
        other["sample_id"] += 16  # rank 1's rows: the next 16 of every global batch
        table = np.concatenate([mine, other])
        table = table[np.unique(table["sample_id"], return_index=True)[1]]
    else:
        other = [(s + 16, u, y, p) for s, u, y, p in own]
        unique = {row[0]: row for part in (own, other) for row in part}
        table = np.array(sorted(unique.values()), dtype=object)
    peak = peak_memory_bytes()["host_peak_rss"] / 2**20
    return {"peak_rss_mib": peak, "baseline_rss_mib": before, "load_s": 0.0, "rows_per_s": rate, "steps": len(table)}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated sample counts")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--designs", default="shards,whole split",
                        help="comma-separated: shards, whole split (10^7 rows whole would need ~38 GiB), "
                             "eval, eval tuples")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--case", nargs=3, metavar=("FILES_JSON", "DESIGN", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(json.loads(Path(args.case[0]).read_text()), args.case[1], int(args.case[2]))))
        return ""

    from benchhost import describe_host, publish

    host = describe_host()
    root = Path(tempfile.mkdtemp(prefix="rank-memory-"))
    lines = []
    for n in (int(s) for s in args.sizes.split(",")):
        t0 = time.perf_counter()
        files = write_shards(root / str(n), n)
        written = time.perf_counter() - t0
        size = sum(Path(f).stat().st_size for f in files) / 2**20
        listing = root / f"{n}.json"
        listing.write_text(json.dumps(files))
        for design in args.designs.split(","):
            out = subprocess.run([sys.executable, __file__, "--case", str(listing), design, str(args.steps)],
                                 capture_output=True, text=True, check=True, cwd=REPO)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            lines.append(f"| {n:,} | {size:,.0f} MiB ({written:.0f} s) | {design} | {r['peak_rss_mib']:,.0f} | "
                         f"{r['load_s']:.1f} | {r['rows_per_s']:,.0f} |")
            print(lines[-1], flush=True)
    block = "\n".join([
        f"\n## Per-rank memory of the data path — {datetime.datetime.now().isoformat(timespec='minutes')}\n",
        f"- Device: {host}",
        f"- Settings: synthetic CTR token shards (prompts 150-350 tokens, 64-item histories), rank 0 of 2, "
        f"training: micro 4 x accumulation 2, {args.steps} steps; eval: the whole split, 16 rows a forward, "
        f"a stand-in score; each case in a fresh process",
        f"- Command: `python jobs/bench/rank_memory.py {shlex.join(argv or sys.argv[1:])}`\n",
        "| samples | shards on disk (write time) | design | peak RSS MiB | load s | rows/s |",
        "|---|---|---|---|---|---|",
        *lines,
    ])
    return publish(block, args.record, RESULTS)


if __name__ == "__main__":
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    main()
