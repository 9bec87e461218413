"""Big raw data: an ML-25M-shaped synthetic dataset through ``distrec data prepare`` (CTR and
generative) and SUBR, with wall time, peak memory, rows and bytes on disk per stage.

Stages (``--stages``, in this order; each runs in its own child process):

- ``generate``: writes the raw dataset in the ``custom`` loader's format
  (``<workdir>/raw/interactions.parquet`` + ``items.parquet``), vectorised with numpy and
  written in chunks of users (bounded memory). Shape: ``--ratings`` ratings over ``--users``
  users and ``--items`` items; every user has >= 20 ratings (as in MovieLens), the rest spread
  by log-normal activity (sigma 1.5: ML-25M's mean/median/max shape); items drawn with a
  Zipf-like popularity, distinct per user; half-star ratings 0.5-5.0 with ML-25M's shares;
  per-user timestamps strictly increasing inside a log-normal activity span between ML-25M's
  first and last rating time; titles "Synthetic Movie 123 (1999)" with 1-3 MovieLens genres.
- ``ctr``: ``python -m distrec data prepare custom --task ctr`` (``data.label_threshold=4``,
  ML-25M's rule; ``data.max_history_stored`` at its default, 64).
- ``generative``: the same for ``--task generative`` (``data.max_history`` default 10).
- ``subr``: ``python -m distrec retrieve`` on the CTR samples (ReLLaX SUBR, Ray Data, the
  bundled offline all-MiniLM-L6-v2 encoder on CPU, k 30, PCA as configured by default).
  Skipped when the ``ctr`` stage did not leave a complete prepared folder (``distrec
  retrieve`` would otherwise prepare it again inside this stage).

Measured per stage: wall time of the child (including interpreter start and imports), its
peak RSS (``VmHWM`` of the child, read by a small wrapper at exit), the peak of the summed RSS
of the child and all its descendants (sampled every 0.1 s by this process; for SUBR that
includes the Ray processes, with shared memory counted once per process that maps it), rows
in and out, and bytes on disk of what the stage wrote. The wrapper also samples the child's
Python stack at its highest RSS, so the table names the distrec function holding the memory.

Memory guard: a stage whose process tree passes ``--max-rss-gib`` (default: total memory minus
3 GiB), or that leaves less than ``--reserve-gib`` available on the machine, is killed and
reported as ``stopped (memory)``; ``--stop-at HH:MM`` (UTC) stops a stage still running then
(``stopped (time)``). Either way the remaining stages that depend on it are skipped and the
block is still printed (and recorded with ``--record``).

    .venv/bin/python jobs/bench/ml25m_prepare.py --ratings 200000 --users 1500 --items 800   # quick check
    .venv/bin/python jobs/bench/ml25m_prepare.py --record                                    # full size
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).with_name("RESULTS.md")
STAGES = ("generate", "ctr", "generative", "subr")
GIB = 2**30

# ----------------------------------------------------------------------------- synthetic data

MIN_PER_USER = 20  # MovieLens keeps users with at least 20 ratings
ACTIVITY_SIGMA = 1.5  # log-normal spread of ratings per user beyond the minimum
POPULARITY_EXPONENT, POPULARITY_OFFSET = 1.05, 40.0  # item weight (rank + offset) ** -exponent
RATING_VALUES = np.arange(1, 11, dtype=np.float32) / 2  # 0.5 .. 5.0
RATING_SHARES = np.array([1.6, 3.1, 1.6, 6.6, 5.0, 19.6, 12.6, 26.6, 8.5, 14.8])  # ML-25M, % per half star
T_FIRST, T_LAST = 789_652_009, 1_574_327_703  # ML-25M's first and last rating (unix seconds)
GENRES = ("Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western")
HEAVY_FRACTION = 16  # users with more than n_items / 16 ratings draw their items by exponential keys


def user_counts(n_ratings: int, n_users: int, n_items: int, rng: np.random.Generator,
                min_per_user: int = MIN_PER_USER, sigma: float = ACTIVITY_SIGMA) -> np.ndarray:
    """Ratings per user (int64 [n_users]): ``min_per_user`` each (fewer only if the sizes
    force it), the rest spread in proportion to log-normal weights, at most ``n_items`` per
    user (distinct items), summing exactly to ``n_ratings``."""
    if n_users < 1 or n_items < 1 or n_ratings < n_users:
        raise ValueError(f"need ratings >= users >= 1 and items >= 1, got {n_ratings}, {n_users}, {n_items}")
    if n_ratings > n_users * n_items:
        raise ValueError(f"{n_ratings} ratings cannot be distinct (user, item) pairs of {n_users} x {n_items}")
    base = min(min_per_user, n_ratings // n_users, n_items)
    cap = n_items - base
    remaining = n_ratings - base * n_users
    weights = rng.lognormal(0.0, sigma, n_users)
    extra = np.zeros(n_users, dtype=np.int64)
    free = np.ones(n_users, dtype=bool)
    while True:  # water-filling: users whose share passes the cap get the cap
        share = weights * (remaining / weights[free].sum())
        over = free & (share >= cap)
        if not over.any():
            break
        extra[over] = cap
        free &= ~over
        remaining -= cap * int(over.sum())
    floors = np.where(free, np.floor(share), 0).astype(np.int64)
    extra[free] = floors[free]
    left = remaining - int(floors[free].sum())
    if left:  # the largest fractional parts get one more
        frac = np.where(free & (extra < cap), share - floors, -1.0)
        extra[np.argsort(-frac, kind="stable")[:left]] += 1
    counts = base + extra
    assert counts.sum() == n_ratings and counts.max() <= n_items
    return counts


def item_weights(n_items: int, rng: np.random.Generator) -> np.ndarray:
    """Popularity (float64 [n_items], sums to 1): Zipf-like over ranks, ranks shuffled over ids."""
    w = (np.arange(n_items) + POPULARITY_OFFSET) ** -POPULARITY_EXPONENT
    w = w[rng.permutation(n_items)]
    return w / w.sum()


def _distinct_light(counts: np.ndarray, cdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Item indices, ``counts[u]`` distinct ones per user, users in order: popularity draws with
    repeats redrawn (only the rows of users that still have a repeat are looked at again)."""
    n_items = cdf.size

    def draw(n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), n_items - 1)

    user = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    items = draw(user.size)
    rows = np.arange(user.size)
    for _ in range(10_000):
        key = user[rows] * n_items + items[rows]
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        repeats = rows[order[1:][ordered[1:] == ordered[:-1]]]
        if repeats.size == 0:
            return items
        items[repeats] = draw(repeats.size)
        rows = rows[np.isin(user[rows], np.unique(user[repeats]))]
    raise RuntimeError("could not draw distinct items")


def _distinct_heavy(counts: np.ndarray, weights: np.ndarray, rng: np.random.Generator, block: int = 32) -> list[np.ndarray]:
    """Per heavy user, ``counts[u]`` distinct items drawn by popularity without replacement
    (Efraimidis-Spirakis: the smallest exponential/weight keys), in random order."""
    out = []
    for lo in range(0, counts.size, block):
        keys = rng.exponential(size=(min(block, counts.size - lo), weights.size)) / weights
        for row, k in zip(keys, counts[lo:lo + block]):
            chosen = np.argpartition(row, k - 1)[:k] if k < weights.size else np.arange(weights.size)
            out.append(rng.permutation(chosen))
    return out


def user_items(counts: np.ndarray, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat item indices (int64, users in order), distinct per user, popularity-skewed."""
    heavy = counts > max(1, weights.size // HEAVY_FRACTION)
    light_items = _distinct_light(counts[~heavy], np.cumsum(weights), rng)
    if not heavy.any():
        return light_items
    heavy_items = _distinct_heavy(counts[heavy], weights, rng)
    pieces, lo, h = [], 0, 0
    for u, k in enumerate(counts):
        if heavy[u]:
            pieces.append(heavy_items[h])
            h += 1
        else:
            pieces.append(light_items[lo:lo + k])
            lo += k
    return np.concatenate(pieces)


def user_timestamps(counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flat unix seconds (int64, users in order), strictly increasing within each user: a
    log-normal activity span (median 30 days) placed uniformly in ML-25M's time range, exponential
    gaps inside it."""
    n = counts.size
    window = T_LAST - T_FIRST
    span = np.clip(rng.lognormal(np.log(30 * 86400), 2.5, n), 0, window).astype(np.int64)
    span = np.maximum(span, counts)  # room for a strictly increasing second per rating
    start = T_FIRST + (rng.random(n) * (window - span + 1)).astype(np.int64)
    first = np.zeros(n, dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    user = np.repeat(np.arange(n), counts)
    position = np.arange(user.size) - first[user]  # 0, 1, ... within each user
    gaps = rng.exponential(size=user.size)
    gaps[first[counts > 0]] = 0.0  # the first rating sits at the span's start
    cum = np.cumsum(gaps)
    cum -= cum[first][user]
    total = np.maximum(np.add.reduceat(gaps, first) if n else gaps, 1e-12)  # per user
    frac = np.clip(cum / total[user], 0.0, 1.0)  # 0 .. 1, non-decreasing within a user
    room = (span - counts)[user]  # the last rating lands at start + span - 1 at most
    return start[user] + np.floor(frac * room).astype(np.int64) + position


def items_table(n_items: int, rng: np.random.Generator) -> pa.Table:
    """``item_id`` 1..n, ``title`` "Synthetic Movie <id> (<year>)", ``genres`` (1-3, ``|``-joined), ``year``."""
    ids = np.arange(1, n_items + 1, dtype=np.int64)
    years = np.clip(np.round(2019 - rng.exponential(18.0, n_items)), 1902, 2019).astype(np.int32)
    n_genres = rng.choice([1, 2, 3], size=n_items, p=[0.45, 0.35, 0.2])
    picks = np.argsort(rng.random((n_items, len(GENRES))), axis=1)[:, :3]
    genres = ["|".join(GENRES[g] for g in sorted(row[:k])) for row, k in zip(picks.tolist(), n_genres.tolist())]
    titles = [f"Synthetic Movie {i} ({y})" for i, y in zip(ids.tolist(), years.tolist())]
    return pa.table({"item_id": ids, "title": titles, "genres": genres, "year": years})


def interaction_chunks(n_ratings: int, n_users: int, n_items: int, seed: int,
                       chunk_ratings: int = 2_000_000) -> Iterator[pa.Table]:
    """The interactions as Arrow tables of about ``chunk_ratings`` rows (whole users each, users
    in id order, each user's rows in time order): ``user_id`` 1..U, ``item_id`` 1..I,
    ``rating`` float32, ``timestamp`` int64. Deterministic for a seed and sizes."""
    rng = np.random.default_rng([seed, 0])
    counts = user_counts(n_ratings, n_users, n_items, rng)
    weights = item_weights(n_items, rng)
    shares = RATING_SHARES / RATING_SHARES.sum()
    ends = np.cumsum(counts)
    cuts = np.unique(np.searchsorted(ends, np.arange(chunk_ratings, n_ratings, chunk_ratings), side="left") + 1)
    bounds = [0, *[int(c) for c in cuts if 0 < c < n_users], n_users]
    for index, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        crng = np.random.default_rng([seed, 1, index])
        c = counts[lo:hi]
        yield pa.table({
            "user_id": np.repeat(np.arange(lo + 1, hi + 1, dtype=np.int64), c),
            "item_id": user_items(c, weights, crng) + 1,
            "rating": RATING_VALUES[crng.choice(RATING_VALUES.size, size=int(c.sum()), p=shares)],
            "timestamp": user_timestamps(c, crng),
        })


def generate(folder: Path, n_ratings: int, n_users: int, n_items: int, seed: int = 0,
             chunk_ratings: int = 2_000_000) -> dict[str, Any]:
    """Write ``folder/interactions.parquet`` (one row group per chunk) and ``folder/items.parquet``."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = 0
    writer = None
    try:
        for table in interaction_chunks(n_ratings, n_users, n_items, seed, chunk_ratings):
            if writer is None:
                writer = pq.ParquetWriter(folder / "interactions.parquet", table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    pq.write_table(items_table(n_items, np.random.default_rng([seed, 2])), folder / "items.parquet")
    return {"ratings": rows, "users": n_users, "items": n_items}


# ----------------------------------------------------------------------------- measurement

# Runs a module or script as __main__ in the child; reports VmHWM at exit and the Python stack
# (distrec / this script frames) at the highest RSS it sampled, into $ML25M_BENCH_STAT.
WRAPPER = r'''
import atexit, json, os, runpy, sys, threading, time, traceback
_out, _page, _main = os.environ["ML25M_BENCH_STAT"], os.sysconf("SC_PAGE_SIZE"), threading.main_thread()
_peak = {"rss": 0, "where": []}
def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _page
def _where():
    frame = sys._current_frames().get(_main.ident)
    stack = traceback.extract_stack(frame) if frame is not None else []
    keep = [s for s in stack if "/distrec/" in s.filename or "ml25m" in s.filename]
    return ["%s:%d %s" % (os.path.relpath(s.filename), s.lineno, s.name) for s in keep][-5:]
def _dump(final):
    hwm = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    with open(_out + ".tmp", "w") as f:
        json.dump({"vm_hwm": hwm, "sampled_peak": _peak["rss"], "where": _peak["where"], "final": final}, f)
    os.replace(_out + ".tmp", _out)
def _sampler():
    dumped = 0
    while True:
        rss = _rss()
        if rss > _peak["rss"]:
            _peak.update(rss=rss, where=_where())
            if rss > dumped + (256 << 20):
                dumped = rss
                _dump(False)
        time.sleep(0.05)
threading.Thread(target=_sampler, daemon=True).start()
atexit.register(_dump, True)
_kind, _target = sys.argv[1], sys.argv[2]
sys.argv = [_target, *sys.argv[3:]]
if _kind == "module":
    runpy.run_module(_target, run_name="__main__", alter_sys=True)
else:
    runpy.run_path(_target, run_name="__main__")
'''


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _name(pid: int) -> str:
    """A process's command line, shortened (Ray names its workers ``ray::<task or actor>``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().split(b"\0")
    except OSError:
        return "?"
    text = words[0].decode(errors="replace")
    return text if text.startswith("ray::") or pid == 0 else " ".join(w.decode(errors="replace") for w in words[:3])[:60]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def run_stage(name: str, kind: str, target: str, args: list[str], env: dict[str, str], workdir: Path,
              max_rss: int, reserve: int, stop_at: float | None) -> dict[str, Any]:
    """Run one stage in a child under the wrapper and the memory/time guard; its figures."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    stat_path = workdir / "logs" / f"{name}.json"
    stat_path.unlink(missing_ok=True)
    log_path = workdir / "logs" / f"{name}.log"
    env = {**env, "ML25M_BENCH_STAT": str(stat_path)}
    peak_tree, stopped, avail_min, largest = 0, None, _meminfo("MemAvailable"), ("", 0)
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, kind, target, *args], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            pids = _tree(proc.pid)
            sizes = {p: _rss(p) for p in pids}
            tree = sum(sizes.values())
            if tree > peak_tree:
                peak_tree = tree
                biggest = max(sizes, key=sizes.get)
                largest = (_name(biggest), sizes[biggest])
            avail = _meminfo("MemAvailable")
            avail_min = min(avail_min, avail)
            if tree > max_rss or avail < reserve:
                stopped = (f"memory: tree RSS {tree / GIB:.1f} GiB, {avail / GIB:.1f} GiB available "
                           f"(limits {max_rss / GIB:.1f} / {reserve / GIB:.1f})")
            elif stop_at is not None and time.time() > stop_at:
                stopped = "time: --stop-at reached"
            if stopped:
                _kill(pids)
                proc.wait()
                break
            time.sleep(0.1)
    wall = time.perf_counter() - t0
    stat = json.loads(stat_path.read_text()) if stat_path.is_file() else {}
    tail = log_path.read_text(errors="replace").strip().splitlines()[-3:] if log_path.is_file() else []
    if stopped:
        status = "stopped (" + stopped.split(":")[0] + ")"
    else:
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    return {"stage": name, "status": status, "detail": stopped or ("" if proc.returncode == 0 else " / ".join(tail)),
            "wall_s": wall, "vm_hwm": stat.get("vm_hwm") or stat.get("sampled_peak", 0), "hwm_exact": bool(stat.get("final")),
            "tree_peak": peak_tree, "where": stat.get("where", []), "avail_min": avail_min, "largest": largest,
            "command": shlex.join(["python", *(["-m", target] if kind == "module" else [_rel(target)]), *args]),
            "log": str(log_path)}


def _rel(path: str) -> str:
    try:
        return str(Path(path).relative_to(ROOT))
    except ValueError:
        return path


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def _split_rows(manifest: dict[str, Any]) -> tuple[int, str]:
    splits = manifest["splits"]
    return sum(s["rows"] for s in splits.values()), " / ".join(f"{s['rows']:,}" for s in splits.values())


# ----------------------------------------------------------------------------- the benchmark


def _job_yaml(workdir: Path, raw: Path) -> Path:
    path = workdir / "job.yaml"
    path.write_text(
        "# written by jobs/bench/ml25m_prepare.py\n"
        "data:\n"
        "  dataset: custom\n"
        f"  raw_path: {raw}\n"
        "  label_threshold: 4.0  # ML-25M's rule: rating >= 4 is a positive\n"
        "subr:\n"
        "  encoder: minilm  # the bundled offline all-MiniLM-L6-v2, on CPU here\n"
        "ray:\n"
        "  num_workers: 1\n"
        "  data_actors: 1\n")
    return path


def _gib(b: int) -> str:
    return f"{b / GIB:.2f}"


def _bytes(b: int) -> str:
    if b >= GIB:
        return f"{b:,} ({b / GIB:.2f} GiB)"
    return f"{b:,} ({b / 2**20:.1f} MiB)" if b >= 2**20 else f"{b:,}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=int, default=25_000_000)
    parser.add_argument("--users", type=int, default=162_000)
    parser.add_argument("--items", type=int, default=59_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/distrec-ml25m"),
                        help="raw data, DISTREC_HOME, prepared folders and per-stage logs (kept afterwards)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    parser.add_argument("--record", action="store_true", help="append the block to jobs/bench/RESULTS.md")
    parser.add_argument("--max-rss-gib", type=float, default=None,
                        help="kill a stage whose process tree passes this RSS (default: total memory - 3 GiB)")
    parser.add_argument("--reserve-gib", type=float, default=1.5,
                        help="kill a stage when the machine has less than this available")
    parser.add_argument("--stop-at", default=None, help="HH:MM (UTC): stop a stage still running then")
    parser.add_argument("--generate-only", action="store_true", help=argparse.SUPPRESS)  # the generate stage's child
    args = parser.parse_args(argv)
    raw = args.workdir / "raw"

    if args.generate_only:
        if raw.exists():
            shutil.rmtree(raw)
        info = generate(raw, args.ratings, args.users, args.items, args.seed)
        print(json.dumps(info))
        return info

    from benchhost import describe_host, publish

    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    stages = [s for s in STAGES if s in stages]
    stop_at = None
    if args.stop_at:
        hh, mm = map(int, args.stop_at.split(":"))
        now = datetime.datetime.now(datetime.timezone.utc)
        stop_at = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()
    max_rss = int((args.max_rss_gib * GIB) if args.max_rss_gib else _meminfo("MemTotal") - 3 * GIB)
    reserve = int(args.reserve_gib * GIB)
    host = describe_host()
    started = datetime.datetime.now().isoformat(timespec="minutes")

    args.workdir.mkdir(parents=True, exist_ok=True)
    home = args.workdir / "home"
    prepared = {t: args.workdir / "prepared" / t for t in ("ctr", "generative")}
    job = _job_yaml(args.workdir, raw)
    from distrec.train.launcher import LOOPBACK_ENV

    env = {**os.environ, "DISTREC_HOME": str(home), "PYTHONUNBUFFERED": "1",
           **{k: os.environ.get(k, v) for k, v in LOOPBACK_ENV.items()}}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    guard = dict(env=env, workdir=args.workdir, max_rss=max_rss, reserve=reserve, stop_at=stop_at)
    sizes = ["--ratings", str(args.ratings), "--users", str(args.users), "--items", str(args.items),
             "--seed", str(args.seed), "--workdir", str(args.workdir)]

    rows: list[dict[str, Any]] = []
    ok: set[str] = set()
    for stage in stages:
        if stage == "generate":
            r = run_stage(stage, "path", str(Path(__file__).resolve()), ["--generate-only", *sizes], **guard)
            if r["status"] == "ok":
                inter = pq.ParquetFile(raw / "interactions.parquet").metadata.num_rows
                items = pq.ParquetFile(raw / "items.parquet").metadata.num_rows
                r.update(rows_in="-", rows_out=f"{inter:,} ratings + {items:,} items", disk=du(raw))
        elif stage in ("ctr", "generative"):
            if not (raw / "interactions.parquet").is_file():
                rows.append({"stage": stage, "status": "skipped (no raw data)"})
                continue
            out = prepared[stage]
            r = run_stage(stage, "module", "distrec",
                          ["data", "prepare", "custom", "--task", stage, "--config", str(job), "--raw-path", str(raw),
                           "--out", str(out), "--overwrite"], **guard)
            manifest = _manifest(out) if r["status"] == "ok" else None
            if manifest:
                total, per_split = _split_rows(manifest)
                r.update(rows_in=f"{manifest['stats']['raw_interactions']:,} ratings",
                         rows_out=f"{total:,} samples ({per_split})", disk=du(out))
        else:  # subr
            source = prepared["ctr"]
            if "ctr" not in ok and _manifest(source) is None:
                rows.append({"stage": stage, "status": "skipped (no CTR samples)"})
                continue
            for old in source.parent.glob(f"{source.name}-subr-*"):
                shutil.rmtree(old, ignore_errors=True)
            shutil.rmtree(home / "cache" / "embeddings", ignore_errors=True)  # time a cold encode
            r = run_stage(stage, "module", "distrec",
                          ["retrieve", "--config", str(job), "data.task=ctr", f"data.prepared_dir={source}"], **guard)
            outs = sorted(source.parent.glob(f"{source.name}-subr-*"))
            manifest = _manifest(outs[-1]) if outs and r["status"] == "ok" else None
            if manifest:
                total, per_split = _split_rows(manifest)
                src_total, _ = _split_rows(_manifest(source))
                t = manifest["subr"]["timings_s"]
                r.update(rows_in=f"{src_total:,} samples", rows_out=f"{total:,} samples ({per_split})", disk=du(outs[-1]),
                         note=f"encode+space {t['encode_and_space']} s, retrieve {t['retrieve']} s, "
                              f"method {manifest['subr'].get('method')}, encoder {manifest['subr']['encoder'].get('spec')} "
                              f"dim {manifest['subr']['encoder'].get('dim')} "
                              f"(cache hit: {manifest['subr']['encoder'].get('cache_hit')})")
        rows.append(r)
        if r["status"] == "ok":
            ok.add(stage)
        print(f"[{stage}] {r['status']} in {r['wall_s']:.1f} s, peak RSS {_gib(r['vm_hwm'])} GiB "
              f"(tree {_gib(r['tree_peak'])} GiB) {r.get('detail', '')}", flush=True)

    lines = ["| stage | status | wall (s) | peak RSS (GiB) | peak RSS incl. children (GiB) | rows in | rows out | on disk (bytes) | highest RSS sampled at |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "wall_s" not in r:
            lines.append(f"| {r['stage']} | {r['status']} | | | | | | | |")
            continue
        where = "<br>".join(f"`{w}`" for w in r["where"][-2:]) if r["where"] else ""
        hwm = _gib(r["vm_hwm"]) + ("" if r["hwm_exact"] else " (sampled)")
        lines.append(f"| {r['stage']} | {r['status']} | {r['wall_s']:.1f} | {hwm} | {_gib(r['tree_peak'])} | "
                     f"{r.get('rows_in', '')} | {r.get('rows_out', '')} | {_bytes(r['disk']) if 'disk' in r else ''} | {where} |")
    notes = [f"- {r['stage']}: {r['detail']}" for r in rows if r.get("detail")]
    notes += [f"- {r['stage']}: at the tree's peak its largest process was `{r['largest'][0]}` "
              f"({_gib(r['largest'][1])} GiB)" for r in rows if r.get("largest") and r["tree_peak"] > r["vm_hwm"] + GIB]
    notes += [f"- {r['stage']}: {r['note']}" for r in rows if r.get("note")]
    settings = (f"synthetic ML-25M-shaped raw data, {args.ratings:,} ratings, {args.users:,} users, {args.items:,} items "
                f"(>= {MIN_PER_USER} per user, log-normal activity sigma {ACTIVITY_SIGMA}, Zipf-like item popularity, "
                f"ML-25M half-star shares, strictly increasing per-user timestamps), seed {args.seed}; dataset `custom` "
                "(Parquet), `data.label_threshold=4.0`, other `data.*` at their defaults (max_history_stored 64, "
                "min_history 5, max_history 10, num_shards 4); SUBR: `distrec retrieve` defaults (k 30, minilm on CPU, "
                f"1 Ray Data actor); memory guard {max_rss / GIB:.1f} GiB tree RSS / {reserve / GIB:.1f} GiB available; "
                "peak RSS = VmHWM of the stage's process, incl. children = sampled sum over its process tree")
    commands = [f"  - bench: `python jobs/bench/ml25m_prepare.py {shlex.join(argv if argv is not None else sys.argv[1:])}`"]
    commands += [f"  - {r['stage']}: `{r['command']}`" for r in rows if "command" in r]
    block = "\n".join([
        f"\n## ML-25M-shaped raw data through prepare and SUBR — {started}\n",
        f"- Device: {host}",
        f"- Settings: {settings}",
        "- Command lines (each stage a child process; DISTREC_HOME under the workdir):",
        *commands,
        "",
        *lines,
        *([""] + notes if notes else []),
    ])
    publish(block, args.record, RESULTS)
    return {"rows": rows, "block": block}


if __name__ == "__main__":
    main()
