"""A prepared dataset on disk: sharded Parquet splits, item/user tables and a manifest.

Layout of a prepared folder::

    manifest.json                  written last; its presence means "complete"
    items.parquet  users.parquet
    train/part-00000.parquet ...   contiguous row ranges, in sample order
    valid/part-00000.parquet ...
    test/part-00000.parquet ...

Each split has ``min(num_shards, rows)`` shards (one empty shard for an empty split, so its
schema survives). Shards are plain Parquet, readable by ``pyarrow.parquet.read_table`` and
``ray.data.read_parquet``.

**Atomicity.** Everything is written into a temporary sibling folder, the manifest last, and
published by :mod:`distrec.atomic` (which checks the manifest is there before the rename). An
existing ``out`` is only touched after the new folder is complete. Any exception,
KeyboardInterrupt included, removes the temporary folder, so no folder with a manifest is ever
left half-written.

**Manifest.** ``format_version``, ``created_at``, ``distrec_version``, the caller's metadata
(dataset, task, config, source, stats, ...), per table ``rows``/``path``/``sha256``, and per
split ``rows``, ``positives`` and ``positive_rate`` (when the split has a ``label`` column,
else null), ``files`` (relative path, rows, sha256 each) and ``sha256``: the sha256 of the
concatenated hex digests of its files, in order.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import distrec
from distrec import atomic
from distrec.errors import DataError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def _write_parquet(table: pa.Table, path: Path) -> None:
    """The one place files are written (a seam tests use to inject failures)."""
    pq.write_table(table, path)


def write_parquet_file(table: pa.Table, path: str | Path) -> Path:
    """Write one standalone Parquet file so readers see the old file or the whole new one
    (:func:`distrec.atomic.write_file`); a failed write leaves no partial ``path`` behind."""
    return atomic.write_file(Path(path), lambda tmp: _write_parquet(table, tmp))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _combined_hash(digests: list[str]) -> str:
    return hashlib.sha256("".join(digests).encode()).hexdigest()


def shard_bounds(rows: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` row ranges: ``min(num_shards, rows)`` of them (>= 1), sizes differing by <= 1."""
    k = max(1, min(num_shards, rows))
    edges = (np.arange(k + 1) * rows) // k
    return [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])]


def write_shard(root: Path, rel: str, table: pa.Table) -> dict[str, Any]:
    """Write one shard at ``root / rel``; its manifest file entry plus ``positives`` (None without labels)."""
    _write_parquet(table, root / rel)
    positives = int(pc.sum(table.column("label")).as_py() or 0) if "label" in table.column_names else None
    return {"path": rel, "rows": table.num_rows, "sha256": sha256_file(root / rel), "positives": positives}


def split_entry(shards: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest entry of a split from its :func:`write_shard` results, in row order."""
    rows = sum(f["rows"] for f in shards)
    positives = None if shards[0]["positives"] is None else sum(f["positives"] for f in shards)
    files = [{k: f[k] for k in ("path", "rows", "sha256")} for f in shards]
    return {"rows": rows, "positives": positives, "positive_rate": positives / rows if positives is not None and rows else None,
            "files": files, "sha256": _combined_hash([f["sha256"] for f in files])}


def _write_split(root: Path, name: str, table: pa.Table, num_shards: int) -> dict[str, Any]:
    (root / name).mkdir()
    return split_entry([write_shard(root, f"{name}/part-{i:05d}.parquet", table.slice(lo, hi - lo))
                        for i, (lo, hi) in enumerate(shard_bounds(table.num_rows, num_shards))])


def _write_table(root: Path, name: str, table: pa.Table) -> dict[str, Any]:
    rel = f"{name}.parquet"
    _write_parquet(table, root / rel)
    return {"path": rel, "rows": table.num_rows, "sha256": sha256_file(root / rel)}


def _write_json(path: Path, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def staged_folder(out: Path, overwrite: bool, error: type[Exception] = DataError,
                  required: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary sibling of ``out`` to fill; on success it replaces ``out`` atomically
    (:func:`distrec.atomic.staged`, which checks ``required`` before the rename).

    On any exception the temporary folder is removed and ``out`` is left as it was, so a failed
    or interrupted write never leaves a folder that looks complete. ``error`` is raised before
    any work when ``out`` exists and ``overwrite`` is False.
    """
    with atomic.staged(Path(out), required, overwrite=overwrite, exists_error=error) as tmp:
        yield tmp


def write_prepared(
    out: Path,
    splits: Mapping[str, pa.Table],
    *,
    items: pa.Table,
    users: pa.Table,
    meta: Mapping[str, Any],
    num_shards: int,
    overwrite: bool = False,
    interactions: pa.Table | None = None,
) -> dict[str, Any]:
    """Atomically write a prepared dataset folder at ``out`` and return its manifest.

    ``splits``: split name -> samples table (written in the given row order).
    ``meta``: extra manifest keys (dataset, task, config, source, stats, ...).
    ``interactions``: the interaction log the samples were built from (``distrec predict``
    rebuilds histories from it), written as the ``interactions`` table.
    Raises DataError if ``out`` exists and ``overwrite`` is False (checked before any work).
    """
    with staged_folder(Path(out), overwrite, required=(MANIFEST,)) as tmp:
        entries = {name: _write_split(tmp, name, t, num_shards) for name, t in splits.items()}
        return write_manifest(tmp, entries, items=items, users=users, meta=meta, interactions=interactions)


def write_manifest(root: Path, splits: Mapping[str, dict[str, Any]], *, items: pa.Table, users: pa.Table,
                   meta: Mapping[str, Any], interactions: pa.Table | None = None) -> dict[str, Any]:
    """Write the item/user tables and, last, the manifest into a staged folder whose split
    shards are already written (``splits``: name -> :func:`split_entry`); returns the manifest."""
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "distrec_version": distrec.__version__,
        **meta,
        "tables": {"items": _write_table(root, "items", items), "users": _write_table(root, "users", users),
                   **({"interactions": _write_table(root, "interactions", interactions)}
                      if interactions is not None else {})},
        "splits": dict(splits),
    }
    _write_json(root / MANIFEST, manifest)
    return manifest


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the prepared folder ``path``; DataError if it is missing or unreadable."""
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise DataError(f"{path}: no {MANIFEST}, so the prepared dataset is incomplete or not one at all")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{file}: unreadable manifest: {exc}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{file}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}; prepare it again"
        )
    return manifest


def _check_file(root: Path, rel: str, expected: str) -> None:
    file = root / rel
    if not file.is_file():
        raise DataError(f"{file}: listed in the manifest but missing")
    actual = sha256_file(file)
    if actual != expected:
        raise DataError(f"{file}: sha256 {actual[:12]}… does not match the manifest's {expected[:12]}… (modified or corrupt)")


def verify(path: Path) -> dict[str, Any]:
    """Recompute every file's sha256 against the manifest; return the manifest or raise DataError naming the file."""
    root = Path(path)
    manifest = read_manifest(root)
    for entry in manifest["tables"].values():
        _check_file(root, entry["path"], entry["sha256"])
    for name, split in manifest["splits"].items():
        for f in split["files"]:
            _check_file(root, f["path"], f["sha256"])
        if _combined_hash([f["sha256"] for f in split["files"]]) != split["sha256"]:
            raise DataError(f"{root / MANIFEST}: split '{name}' content hash does not match its files")
    return manifest


def open_split(path: Path, split: str) -> pa.Table:
    """All shards of ``split`` concatenated in order (the samples in their written order)."""
    root = Path(path)
    manifest = read_manifest(root)
    if split not in manifest["splits"]:
        raise DataError(f"{root}: no split '{split}'; it has {sorted(manifest['splits'])}")
    return pa.concat_tables([pq.read_table(root / f["path"]) for f in manifest["splits"][split]["files"]])


def open_table(path: Path, name: str) -> pa.Table:
    """The ``items`` or ``users`` table of a prepared folder."""
    root = Path(path)
    manifest = read_manifest(root)
    if name not in manifest["tables"]:
        raise DataError(f"{root}: no table '{name}'; it has {sorted(manifest['tables'])}")
    return pq.read_table(root / manifest["tables"][name]["path"])
