"""``distrec predict`` as a Ray Data pipeline: input shards -> scoring actors -> output shards + manifest.

The driver lists the input (a Parquet/Arrow file or folder, a local path or any URI
``pyarrow.fs`` knows) and cuts it into row-range tasks of at most ``chunk_rows`` rows. One
actor pool runs them (``map_batches`` with :class:`ScoreActor`, one model copy per actor, a
GPU per actor when asked for): each task reads its rows, asks the method's :class:`Scorer`
for an output row per good input row and a reason per bad one, and writes one output shard.
The driver then writes ``_manifest.json`` last. A local ``--out`` is built in a temporary
sibling and renamed only when complete (:func:`distrec.atomic.staged`); on object storage the
shards are written first and the manifest published last, and a failed run removes its shards.
Either way nothing is published when a bad row is met under ``on_bad_row="error"``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import pyarrow as pa

from distrec.errors import ConfigError, DataError

MANIFEST = "_manifest.json"  # "_": readers of the folder (pyarrow, Spark, Ray Data) skip it
MAX_REASONS = 20  # bad-row reasons kept in the manifest (all are counted)
_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".arrow": "ipc", ".feather": "ipc", ".ipc": "ipc"}


class Scorer(Protocol):
    """What a method supplies: built once per actor, called once per task."""

    def score(self, rows: pa.Table) -> tuple[pa.Table, list[tuple[int, str]]]:
        """``rows``: a chunk of input rows. Returns the output rows of the good input rows, in
        input order, and ``(index in the chunk, reason)`` for every bad row."""


@dataclass(frozen=True)
class ScorerSpec:
    """How the actors build a method's scorer: ``factory(**kwargs)`` must be importable by name."""

    factory: Callable[..., Scorer]
    kwargs: dict[str, Any]
    method: str  # "ctr", "generative" or "eimf", for the manifest
    num_gpus: float = 0.0


@dataclass(frozen=True)
class PredictOptions:
    actors: int = 1
    chunk_rows: int = 2048  # rows per task (and at most per output shard)
    on_bad_row: Literal["error", "skip"] = "error"
    progress: bool = True


@dataclass
class PredictResult:
    out: str
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        m = self.manifest
        return (f"predicted {m['rows_out']} of {m['rows_in']} rows ({m['method']}) -> {self.out}: "
                f"{len(m['files'])} shards, {m['bad_rows']} bad rows skipped, "
                f"{m['elapsed_s']:.1f} s, {m['rows_per_s']:.1f} rows/s with {m['actors']} actor(s)")


# ---------------------------------------------------------------------------- input


def _filesystem(spec: str):
    """``(pyarrow filesystem, its path)`` of a local path or URI (``distrec.storage_uri.locate``)."""
    from distrec.storage_uri import locate

    where = locate(spec)
    return where.fs, where.path


def input_files(spec: str) -> list[tuple[str, str]]:
    """``(path, format)`` of every Parquet/Arrow file at ``spec`` (a file or a folder, sorted).

    Raises DataError when nothing readable is there."""
    import pyarrow.fs as pafs

    fs, root = _filesystem(spec)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{spec}: no such file or folder")
    if info.type == pafs.FileType.File:
        entries = [info]
    else:
        entries = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                   if i.type == pafs.FileType.File and not Path(i.path).name.startswith(("_", "."))]
    files = [(e.path, _FORMATS[Path(e.path).suffix.lower()]) for e in sorted(entries, key=lambda e: e.path)
             if Path(e.path).suffix.lower() in _FORMATS]
    if not files:
        raise DataError(f"{spec}: no Parquet (.parquet) or Arrow IPC (.arrow/.feather) files")
    return files


def _read(fs, path: str, fmt: str, what):
    """``what(dataset)`` of one input file; DataError naming it when it is truncated or not that format."""
    import pyarrow.dataset as pads

    try:
        return what(pads.dataset(path, format=fmt, filesystem=fs))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: unreadable {fmt} file (truncated or another format?): {exc}") from None


def read_file(fs, path: str, fmt: str) -> pa.Table:
    """One input file of filesystem ``fs``, whole."""
    return _read(fs, path, fmt, lambda ds: ds.to_table())


def input_schema(spec: str) -> tuple[pa.Schema, list[tuple[str, str, int]]]:
    """The first file's schema and ``(path, format, rows)`` of every file; files whose columns
    differ from the first's are refused by name."""
    files = input_files(spec)
    fs, _ = _filesystem(spec)
    schema = None
    listed = []
    for path, fmt in files:
        this, rows = _read(fs, path, fmt, lambda ds: (ds.schema, ds.count_rows()))
        if schema is None:
            schema = this
        elif set(this.names) != set(schema.names):
            raise DataError(f"{path}: columns {sorted(this.names)} differ from {files[0][0]}'s {sorted(schema.names)}")
        listed.append((path, fmt, rows))
    return schema, listed


def tasks_for(files: list[tuple[str, str, int]], chunk_rows: int) -> list[dict[str, Any]]:
    """One task per output shard: ``{src, fmt, lo, hi, rel}``, files and rows in order."""
    tasks = []
    for path, fmt, rows in files:
        for lo in range(0, max(rows, 1), chunk_rows):
            rel = f"part-{len(tasks):05d}.parquet"
            tasks.append({"src": path, "fmt": fmt, "lo": lo, "hi": min(lo + chunk_rows, rows), "rel": rel})
    return tasks


# ---------------------------------------------------------------------------- actors


class ScoreActor:
    """Ray Data actor: one scorer (one model copy); per task reads its rows, scores them and
    writes one output shard under ``out_root`` of ``out_fs``. The filesystems travel from the
    driver (pickled, as Ray Train ships its storage filesystem), endpoint settings included."""

    def __init__(self, spec: ScorerSpec, input_fs, out_fs, out_root: str, local_out: bool) -> None:
        self.scorer = spec.factory(**spec.kwargs)
        self.input_fs, self.out_fs, self.out_root, self.local_out = input_fs, out_fs, out_root, local_out
        self._source: tuple[str | None, pa.Table | None] = (None, None)

    def _read(self, path: str, fmt: str) -> pa.Table:
        if self._source[0] != path:
            self._source = (path, read_file(self.input_fs, path, fmt))
        return self._source[1]

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow.parquet as pq

        from distrec.data.storage import sha256_file

        entries = []
        for task in batch.to_pylist():
            rows = self._read(task["src"], task["fmt"]).slice(task["lo"], task["hi"] - task["lo"])
            started = time.perf_counter()
            out, bad = self.scorer.score(rows)
            target = f"{self.out_root.rstrip('/')}/{task['rel']}"
            pq.write_table(out, target, filesystem=self.out_fs)
            digest = sha256_file(Path(target)) if self.local_out else None
            reasons = [{"file": task["src"], "row": task["lo"] + i, "reason": why} for i, why in bad]
            entries.append(json.dumps({"path": task["rel"], "rows": out.num_rows, "rows_in": rows.num_rows,
                                       "sha256": digest, "bad": reasons, "seconds": time.perf_counter() - started}))
        return pa.table({"rel": batch.column("rel"), "entry": pa.array(entries, pa.string())})


# ---------------------------------------------------------------------------- driver


def _bad_row_error(bad: list[dict[str, Any]]) -> DataError:
    first = bad[0]
    more = f" (and {len(bad) - 1} more bad rows)" if len(bad) > 1 else ""
    return DataError(f"{first['file']}, row {first['row']}: {first['reason']}{more}; nothing was written "
                     "(pass --on-bad-row skip to score the good rows and count the bad ones)")


def _run_pool(tasks: list[dict[str, Any]], spec: ScorerSpec, input_spec: str, out_root: str,
              opts: PredictOptions) -> list[dict[str, Any]]:
    import ray
    import ray.data
    from tqdm import tqdm

    from distrec.data.ray_data import quiet_ray_data

    quiet_ray_data()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    from distrec.storage_uri import is_uri

    out_fs, out_path = _filesystem(out_root)
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        ScoreActor,
        fn_constructor_kwargs={"spec": spec, "input_fs": _filesystem(input_spec)[0], "out_fs": out_fs,
                               "out_root": out_path, "local_out": not is_uri(out_root)},
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=max(1, opts.actors)),
        num_cpus=1,
        num_gpus=spec.num_gpus,
    )
    entries = []
    with tqdm(total=sum(t["hi"] - t["lo"] for t in tasks), desc=f"predict {spec.method}", unit="rows",
              disable=not opts.progress, mininterval=5) as bar:
        for row in ds.iter_rows():
            entry = json.loads(row["entry"])
            entries.append(entry)
            bar.update(entry["rows_in"])
    order = {t["rel"]: i for i, t in enumerate(tasks)}
    return sorted(entries, key=lambda e: order[e["path"]])


def run_predict(spec: ScorerSpec, input_spec: str, out: str, opts: PredictOptions, meta: dict[str, Any],
                overwrite: bool = False, files: list[tuple[str, str, int]] | None = None) -> PredictResult:
    """Score every row of ``input_spec`` with ``spec`` into ``out`` (local folder or URI prefix).
    ``files``: :func:`input_schema`'s listing when the caller has it already (else listed here).

    Raises DataError naming the file and row of the first bad row (``on_bad_row="error"``),
    ConfigError when ``out`` exists without ``overwrite``. Nothing is published on failure.
    """
    from distrec import atomic
    from distrec.storage_uri import is_uri, locate

    if opts.on_bad_row not in ("error", "skip"):
        raise ConfigError(f"--on-bad-row must be 'error' or 'skip', got {opts.on_bad_row!r}")
    if files is None:
        _, files = input_schema(input_spec)
    tasks = tasks_for(files, opts.chunk_rows)
    started = time.perf_counter()

    def finish(entries: list[dict[str, Any]]) -> dict[str, Any]:
        bad = [b for e in entries for b in e["bad"]]
        if bad and opts.on_bad_row == "error":
            raise _bad_row_error(bad)
        elapsed = time.perf_counter() - started
        rows_in = sum(e["rows_in"] for e in entries)
        return {**meta, "method": spec.method, "input": input_spec, "rows_in": rows_in,
                "rows_out": sum(e["rows"] for e in entries), "bad_rows": len(bad), "bad_examples": bad[:MAX_REASONS],
                "actors": opts.actors, "elapsed_s": elapsed, "rows_per_s": rows_in / max(elapsed, 1e-9),
                "scoring_s": sum(e["seconds"] for e in entries),  # summed over actors: model time without start-up
                "files": [{k: e[k] for k in ("path", "rows", "sha256")} for e in entries]}

    if not is_uri(out):
        target = Path(out).expanduser().resolve()
        with atomic.staged(target, (MANIFEST,), overwrite=overwrite, exists_error=ConfigError) as tmp:
            manifest = finish(_run_pool(tasks, spec, input_spec, str(tmp), opts))
            atomic.write_json(tmp / MANIFEST, manifest)
        return PredictResult(str(target), manifest)

    where = locate(out)
    if where.exists() and not overwrite:
        raise ConfigError(f"{out} already exists (pass --overwrite to replace it)")
    try:
        manifest = finish(_run_pool(tasks, spec, input_spec, out, opts))
        (where / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # published last
    except BaseException:
        fs, root = _filesystem(out)
        try:
            fs.delete_dir(root)  # the shards and the prefix's folder marker
        except FileNotFoundError:
            pass
        raise
    return PredictResult(out, manifest)
