"""SUBR on the real ML-100K CTR samples: samples/s of ``distrec retrieve``'s Ray Data pipeline.

    .venv/bin/python jobs/bench/subr_ml100k.py [--actors 1,2] [--k 10] [--no-append]

Prepares ML-100K (all 95,285 CTR samples, no subsets) if needed, encodes the 1,682 titles
once with the offline MiniLM (cached; the timed runs reuse the vectors), then runs
``build_retrieval`` with each actor count, plus the same retrieval in one process with no Ray
(the floor the pipeline's overhead is measured against). Appends a block to RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import shlex
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def main(argv: list[str] | None = None) -> str:
    from subr_throughput import _versions

    from distrec.config import load_job_config
    from distrec.data import storage
    from benchhost import describe_host
    from distrec.retrieval.encoders import encode_items
    from distrec.retrieval.pipeline import build_retrieval
    from distrec.retrieval.subr import build_space, retrieve_table
    from distrec.train.artefacts import ensure_prepared
    from distrec.train.launcher import init_ray

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--actors", default="1,2")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--config", default="jobs/ml100k_rellax.yaml")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    job = load_job_config(args.config, ["data.train_size=null", "data.valid_size=null", "data.test_size=null",
                                        "subr.enabled=true", f"subr.k={args.k}", *args.overrides])
    device = describe_host()
    prepared = ensure_prepared(job)
    init_ray(job.ray)
    items = storage.open_table(prepared, "items")
    t0 = time.perf_counter()
    ids, vectors, info = encode_items(items, job.data.dataset, spec=job.subr.encoder, genres=job.subr.item_text_genres)
    encode_s = time.perf_counter() - t0
    n = sum(s["rows"] for s in storage.read_manifest(prepared)["splits"].values())

    t0 = time.perf_counter()
    space = build_space(ids, vectors, job.subr)
    for split in ("train", "valid", "test"):
        retrieve_table(storage.open_split(prepared, split), space, job.subr)
    in_process = n / (time.perf_counter() - t0)

    rows = [f"| one process, no Ray (read + space + retrieve) | {in_process:,.0f} | |"]
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(job.subr)
        build_retrieval(prepared, Path(tmp) / "warm", cfg, n_actors=1, item_vectors=(ids, vectors))  # untimed warm-up
        for a in [int(x) for x in args.actors.split(",")]:
            t0 = time.perf_counter()
            build_retrieval(prepared, Path(tmp) / f"out-{a}", cfg, n_actors=a, item_vectors=(ids, vectors))
            rate = n / (time.perf_counter() - t0)
            base = base or rate
            rows.append(f"| `build_retrieval`, {a} Ray Data actor{'s' if a > 1 else ''} (read, retrieve, write, manifest) "
                        f"| {rate:,.0f} | {rate / base:.2f}× |")
    table = "| path | samples/s | vs 1 actor |\n|---|---|---|\n" + "\n".join(rows)
    command = " ".join([Path(sys.executable).name, "jobs/bench/subr_ml100k.py",
                        *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    block = (f"\n## SUBR on ML-100K (real samples) — {datetime.datetime.now().isoformat(timespec='minutes')}\n\n"
             f"- Device: {device}\n- Versions: {_versions()}\n"
             f"- Settings: {n:,} CTR samples (all splits), K={job.subr.k}, order={job.subr.order}, "
             f"encoder={info.get('spec')} (dim {info.get('dim')}; {encode_s:.1f} s for {len(ids):,} titles incl. "
             f"cache), PCA {job.subr.pca_dim}, {job.subr.similarity}\n- Command: `{command}`\n\n{table}\n")
    print(block)
    if not args.no_append:
        with RESULTS.open("a") as fh:
            fh.write(block)
    return table


if __name__ == "__main__":
    main()
