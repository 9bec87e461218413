"""SUBR throughput (samples/s) on synthetic catalogues shaped like ML-1M and ML-25M, against a
reference that follows ReLLa's procedure, measured in the same run, plus 1 vs 2 Ray Data actors.

Synthetic data: ``ml1m`` = 3,706 items, ``ml25m`` = 59,047 items; item vectors are clustered
Gaussians already at the post-PCA width (``--dim``, default 512), cosine for ml1m and dot for
ml25m (methods.md §3.4 item 4); histories have log-normal lengths (mean ≈ 160, clipped to
[5, 2000]) of distinct, popularity-skewed items.

Measured per catalogue and sample count:

- distrec's vectorised SUBR (``retrieve_arrays``) for each ``--methods`` path, in-process,
  batches of 1,024 samples (the ``matrix`` path's one-off item×item product is timed apart);
- the ReLLa reference: a full item×item similarity ranking (``argsort`` of every row; for
  ml25m, whose full ranking would need 14 GB, only the rows of the targets used), then per
  sample a Python walk down the target's ranking until K history items are found, re-sorted
  chronologically. Its throughput counts the walks only (the ranking is timed apart), so the
  ratio is the most favourable one for the reference. It runs on the first ``--ref-samples``
  samples and its output is compared with distrec's (agreement %);
- ``build_retrieval`` end to end (Parquet in -> Ray Data actor pool -> Parquet out, including
  actor start-up and the write) with 1 and 2 actors on ``--ray-samples`` samples, after one
  untimed warm-up build (Ray Data's helper actors and worker processes start once).

    .venv/bin/python jobs/bench/subr_throughput.py                       # default small config
    .venv/bin/python jobs/bench/subr_throughput.py --samples 10000,100000,1000000 --ref-samples 5000
    .venv/bin/python jobs/bench/subr_throughput.py --catalogues ml1m --samples 2000 --no-append
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchhost import describe_host

RESULTS = Path(__file__).with_name("RESULTS.md")
CATALOGUES = {"ml1m": (3706, "cosine"), "ml25m": (59047, "dot")}


# ----------------------------------------------------------------------------- synthetic data


def make_vectors(n_items: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.standard_normal((64, dim)).astype(np.float32)
    vec = centres[rng.integers(0, 64, n_items)] + 0.8 * rng.standard_normal((n_items, dim)).astype(np.float32)
    return np.ascontiguousarray(vec, dtype=np.float32)


def make_samples(n: int, n_items: int, rng: np.random.Generator, max_len: int = 2000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(offsets [n+1], flat history item ids, target ids)``; distinct items per history."""
    lengths = np.clip(rng.lognormal(np.log(100), 0.95, n), 5, max_len).astype(np.int64)
    lengths = np.minimum(lengths, n_items - 1)
    weights = 1.0 / (np.arange(n_items) + 20.0) ** 0.7  # popularity skew
    weights /= weights.sum()
    seg = np.repeat(np.arange(n, dtype=np.int64), lengths)
    flat = rng.choice(n_items, size=seg.size, p=weights).astype(np.int64)
    _, first = np.unique(seg * n_items + flat, return_index=True)  # drop repeats within a history
    first.sort()
    flat, seg = flat[first], seg[first]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(seg, minlength=n), out=offsets[1:])
    targets = rng.choice(n_items, size=n, p=weights).astype(np.int64)
    return offsets, flat, targets


# ----------------------------------------------------------------------------- measurements


def run_subr(offsets, flat, targets, space, cfg, batch: int = 1024) -> tuple[float, list[np.ndarray]]:
    from distrec.retrieval.subr import retrieve_arrays

    outs = []
    n = targets.size
    t0 = time.perf_counter()
    for lo in range(0, n, batch):
        hi = min(n, lo + batch)
        values, off = retrieve_arrays(offsets[lo:hi + 1] - offsets[lo], flat[offsets[lo]:offsets[hi]], targets[lo:hi], space, cfg)
        outs.extend(np.split(values, off[1:-1]))
    return time.perf_counter() - t0, outs


def reference_rella(offsets, flat, targets, vectors, k: int, n_ref: int) -> tuple[float, float, list[list[int]]]:
    """ReLLa's procedure: item×item ranking, then walk the target's ranking. Returns
    (ranking seconds, walk seconds, per-sample chronological positions)."""
    t0 = time.perf_counter()
    used = np.unique(targets[:n_ref])
    ranking: dict[int, np.ndarray] = {}
    for lo in range(0, used.size, 256):  # a block of rows at a time; full matrix for ml1m-sized catalogues
        rows = used[lo:lo + 256]
        sims = vectors[rows] @ vectors.T
        order = np.argsort(-sims, axis=1, kind="stable")
        for r, o in zip(rows, order):
            ranking[int(r)] = o
    rank_s = time.perf_counter() - t0
    out = []
    t0 = time.perf_counter()
    for s in range(n_ref):
        hist = flat[offsets[s]:offsets[s + 1]].tolist()
        pos = {item: p for p, item in enumerate(hist)}
        found = []
        if len(hist) <= k:
            found = list(range(len(hist)))
        else:
            for item in ranking[int(targets[s])]:
                p = pos.get(int(item))
                if p is not None:
                    found.append(p)
                    if len(found) == k:
                        break
        out.append(sorted(found))
    return rank_s, time.perf_counter() - t0, out


def ray_end_to_end(offsets, flat, targets, ids, vectors, cfg, actors: list[int], workdir: Path, warmup: bool = True) -> dict[int, float]:
    import pyarrow as pa

    from distrec.data import storage
    from distrec.data.schema import CTR_SAMPLES, ITEMS, USERS
    from distrec.retrieval.pipeline import build_retrieval

    n = targets.size
    hist = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(flat))
    ratings = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(np.full(flat.size, 4.0, np.float32)))
    samples = pa.Table.from_arrays(
        [pa.array(np.arange(n)), pa.array(np.arange(n) % 1000), pa.array(targets), pa.array(np.full(n, 4.0, np.float32)),
         pa.array(np.arange(n)), pa.array(np.ones(n, np.int8)), hist, ratings],
        schema=CTR_SAMPLES,
    )
    items = pa.table({"item_id": pa.array(ids), "title": pa.array([f"item {i}" for i in ids])})
    for f in ITEMS:
        if f.name not in items.column_names:
            items = items.append_column(f, pa.nulls(len(ids), f.type))
    users = pa.Table.from_pylist([], schema=USERS)
    src = workdir / "prepared"
    storage.write_prepared(src, {"train": samples}, items=items.select(ITEMS.names), users=users,
                           meta={"dataset": "synthetic", "task": "ctr"}, num_shards=4, overwrite=True)
    if warmup:  # untimed: starts Ray Data's helper actors and worker processes once
        warm = workdir / "warm"
        storage.write_prepared(warm, {"train": samples.slice(0, min(n, 256))}, items=items.select(ITEMS.names),
                               users=users, meta={"dataset": "synthetic", "task": "ctr"}, num_shards=1, overwrite=True)
        build_retrieval(warm, workdir / "warm-out", cfg, n_actors=max(actors), item_vectors=(ids, vectors), overwrite=True)
    res = {}
    for a in actors:
        t0 = time.perf_counter()
        build_retrieval(src, workdir / f"subr-{a}", cfg, n_actors=a, item_vectors=(ids, vectors), overwrite=True)
        res[a] = n / (time.perf_counter() - t0)
    return res


# ----------------------------------------------------------------------------- report


def _versions() -> str:
    import faiss
    import pyarrow
    import ray
    import sklearn

    return (f"python {platform.python_version()}, numpy {np.__version__}, faiss {faiss.__version__}, "
            f"scikit-learn {sklearn.__version__}, pyarrow {pyarrow.__version__}, ray {ray.__version__}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogues", default="ml1m,ml25m", help="comma list of ml1m, ml25m")
    parser.add_argument("--samples", default="10000", help="comma list of sample counts (1e4..1e6)")
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--dim", type=int, default=512, help="item vector width (post-PCA)")
    parser.add_argument("--methods", default="auto,gather,faiss", help="comma list of auto, matrix, gather, faiss")
    parser.add_argument("--ref-samples", type=int, default=1000, help="samples the ReLLa reference walks")
    parser.add_argument("--ray-samples", type=int, default=10000, help="samples for the Ray Data runs (0: skip)")
    parser.add_argument("--actors", default="1,2", help="comma list of actor counts for the Ray Data runs")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up Ray Data build")
    parser.add_argument("--ray-catalogue", default=None, help="catalogue of the Ray Data runs (default: the first)")
    parser.add_argument("--max-len", type=int, default=2000, help="longest history")
    parser.add_argument("--items", type=int, default=None, help="override the catalogue size (tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="file the result block is appended to")
    parser.add_argument("--no-append", action="store_true", help="print only; do not append to the results file")
    args = parser.parse_args(argv)

    from distrec.config.subr import SubrConfig
    from distrec.retrieval.subr import build_space, resolve_method

    device, versions = describe_host(), _versions()
    rng = np.random.default_rng(args.seed)
    sizes = [int(float(s)) for s in args.samples.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    actors = [int(a) for a in args.actors.split(",") if a]
    lines = ["| catalogue | items | samples | mean hist | path | samples/s | vs ReLLa ref | agree |", "|---|---|---|---|---|---|---|---|"]
    ray_lines = ["| catalogue | samples | actors | samples/s (end to end) | vs 1 actor |", "|---|---|---|---|---|"]
    results: dict[str, Any] = {"subr": [], "reference": [], "ray": []}
    names = [c for c in args.catalogues.split(",") if c]
    ray_name = args.ray_catalogue or names[0]
    for name in names:
        n_items, similarity = CATALOGUES[name]
        n_items = args.items or n_items
        ids = np.arange(n_items, dtype=np.int64)
        vectors = make_vectors(n_items, args.dim, rng)
        base = SubrConfig(k=args.k, similarity=similarity, pca_dim=None)
        space = build_space(ids, vectors, base)
        for n in sizes:
            offsets, flat, targets = make_samples(n, n_items, rng, args.max_len)
            mean_len = float(np.diff(offsets).mean())
            n_ref = min(n, args.ref_samples)
            rank_s, walk_s, ref_out = reference_rella(offsets, flat, targets, space.vectors, args.k, n_ref)
            ref_rate = n_ref / walk_s
            results["reference"].append({"catalogue": name, "samples": n_ref, "ranking_s": rank_s, "samples_per_s": ref_rate})
            lines.append(f"| {name} | {n_items} | {n_ref} | {np.diff(offsets[:n_ref + 1]).mean():.0f} | ReLLa reference "
                         f"(walk only; ranking {rank_s:.2f} s apart) | {ref_rate:,.0f} | 1.0× | |")
            for method in methods:
                cfg = SubrConfig(k=args.k, similarity=similarity, pca_dim=None, method=method)  # type: ignore[arg-type]
                resolved = resolve_method(space, cfg)
                if resolved == "matrix" and n_items > cfg.max_matrix_items:
                    continue
                build_s = 0.0
                if resolved == "matrix":
                    t0 = time.perf_counter()
                    space.matrix()
                    build_s = time.perf_counter() - t0
                secs, outs = run_subr(offsets, flat, targets, space, cfg)
                rate = n / secs
                agree = np.mean([a.tolist() == b for a, b in zip(outs[:n_ref], ref_out)]) * 100
                label = f"{method}" + (f" (= {resolved})" if method == "auto" else "")
                if build_s:
                    label += f" (+{build_s:.2f} s item×item product once)"
                lines.append(f"| {name} | {n_items} | {n} | {mean_len:.0f} | {label} | {rate:,.0f} | "
                             f"{rate / ref_rate:.1f}× | {agree:.1f}% |")
                results["subr"].append({"catalogue": name, "samples": n, "method": resolved, "samples_per_s": rate,
                                        "vs_reference": rate / ref_rate, "agree_pct": agree})
            space._matrix = None  # free before the next size / catalogue
        if args.ray_samples > 0 and actors and name == ray_name:
            import ray

            from distrec.config import RayConfig
            from distrec.train.launcher import LOOPBACK_ENV, init_ray

            if not ray.is_initialized():
                os.environ.update({k: os.environ.get(k, v) for k, v in LOOPBACK_ENV.items()})
                init_ray(RayConfig(num_workers=max(actors)))
            offsets, flat, targets = make_samples(args.ray_samples, n_items, rng, args.max_len)
            with tempfile.TemporaryDirectory(prefix="subr-bench-") as tmp:
                rates = ray_end_to_end(offsets, flat, targets, ids, vectors, base, actors, Path(tmp), warmup=not args.no_warmup)
            for a, rate in rates.items():
                ray_lines.append(f"| {name} | {args.ray_samples} | {a} | {rate:,.0f} | {rate / rates[actors[0]]:.2f}× |")
                results["ray"].append({"catalogue": name, "samples": args.ray_samples, "actors": a, "samples_per_s": rate})
    table = "\n".join(lines)
    ray_table = "\n".join(ray_lines) if results["ray"] else ""
    settings = (f"K={args.k}, dim={args.dim} (no PCA; vectors synthetic at post-PCA width), ml1m cosine / ml25m dot, "
                f"histories log-normal mean≈160 clipped [5, {args.max_len}], distinct items, batch 1,024, seed {args.seed}")
    print(f"device: {device}\nversions: {versions}\nsettings: {settings}\n")
    print(table)
    if ray_table:
        print("\nRay Data build_retrieval (read -> actor pool -> write), end to end:\n" + ray_table)
    if not args.no_append:
        command = " ".join([Path(sys.executable).name, "jobs/bench/subr_throughput.py", *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
        block = (f"\n## SUBR throughput — {datetime.datetime.now().isoformat(timespec='minutes')}\n\n"
                 f"- Device: {device}\n- Versions: {versions}\n- Settings: {settings}\n- Command: `{command}`\n\n"
                 f"{table}\n")
        if ray_table:
            block += f"\nRay Data `build_retrieval` end to end (incl. actor start-up and Parquet write):\n\n{ray_table}\n"
        args.results.parent.mkdir(parents=True, exist_ok=True)
        with args.results.open("a") as fh:
            fh.write(block)
    results["table"] = table
    results["ray_table"] = ray_table
    return results


if __name__ == "__main__":
    main()
