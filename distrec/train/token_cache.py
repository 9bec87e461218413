"""Token shards: a prepared folder tokenised once, cached, and read by every later run.

Key (:func:`cache_key`): the prepared folder's content hashes (every split and table), the
tokenizer's fingerprint (its vocabulary/merges, special tokens and chat template), the
``prompt`` section, the task and the method switches that change the tokens (SPA's placeholder
markers, CFT's counterfactual rows). Folder: ``$DISTREC_HOME/tokens/<dataset>-<task>-<key>/``
with ``<split>/part-*.arrow`` (Arrow IPC files, token ids as ``list<int32>``) and ``manifest.json`` (key
inputs, rows per split, files), built by the Ray Data tokenisation actors of
:mod:`distrec.train.data_stream` and published whole (:func:`distrec.atomic.ensure_folder`:
concurrent drivers build it once). A hit does no tokenisation; both cases are printed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from distrec import atomic, paths
from distrec.config import JobConfig
from distrec.train.row_source import BATCH_ROWS_KEY

MANIFEST = "manifest.json"
FORMAT = 4  # 3: Arrow IPC files in BATCH_ROWS-row record batches; 4: the batch size in the schema metadata
TOKEN_COLUMNS = ("input_ids", "labels", "cf_input_ids", "cf_labels")
ROWS_PER_FILE = 100_000
BATCH_ROWS = 128  # IPC record batch: what a worker reads to get one of its rows (train.row_source)


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what decides token ids: the tokenizer model (vocabulary, merges, normaliser),
    its special tokens and its chat template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    model = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, model, json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
             str(getattr(tokenizer, "chat_template", None) or "")]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_key(job: JobConfig, prepared_manifest: dict, tokenizer) -> dict[str, Any]:
    """Everything the token ids depend on (module docstring)."""
    return {
        "format": FORMAT,
        "splits": {name: s["sha256"] for name, s in prepared_manifest["splits"].items()},
        "tables": {name: t["sha256"] for name, t in prepared_manifest["tables"].items()
                   if name in ("items", "users")},
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "prompt": dataclasses.asdict(job.prompt),
        "task": job.data.task,
        "spa_markers": job.spa.enabled,
        "counterfactual": job.data.task == "generative" and job.cft.lam > 0,
    }


def cache_dir(job: JobConfig, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return paths.distrec_home() / "tokens" / f"{job.data.dataset}-{job.data.task}-{digest}"


def _arrow(batch: dict[str, np.ndarray]) -> pa.Table:
    """A numpy batch of the tokenisation actors as Arrow: ragged id columns as ``list<int32>``
    (token ids; vocabularies and -100 fit) or ``list<int64>`` (item ids), the rest as they are."""
    columns = {}
    for name, values in batch.items():
        if name == "split":
            continue
        if values.dtype == object or values.ndim > 1:  # ragged rows, or equal-length rows as a 2-D array
            arrays = [np.asarray(v) for v in values]
            offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
            np.cumsum([len(a) for a in arrays], out=offsets[1:])
            dtype = np.int32 if name in TOKEN_COLUMNS else np.int64
            flat = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
            columns[name] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        else:
            columns[name] = pa.array(values)
    return pa.table(columns)


def write_split(batches: Iterable[dict[str, np.ndarray]], folder: Path) -> dict[str, Any]:
    """One split's numpy batches (any sizes) as Arrow IPC files of ``ROWS_PER_FILE`` rows, each
    cut into record batches of exactly ``BATCH_ROWS`` rows but its last (the layout
    :class:`~distrec.train.row_source.ShardRows` relies on); returns ``{"rows", "files"}``."""
    folder.mkdir(parents=True)
    files: list[str] = []

    def write_file(table: pa.Table) -> None:
        files.append(f"part-{len(files):05d}.arrow")
        table = table.combine_chunks().replace_schema_metadata(
            {**(table.schema.metadata or {}), BATCH_ROWS_KEY: str(BATCH_ROWS).encode()})
        with pa.OSFile(str(folder / files[-1]), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=BATCH_ROWS)

    pending, rows = None, 0  # rows not yet in a file (one table), rows seen
    for batch in batches:
        table = _arrow(batch)
        pending = table if pending is None else pa.concat_tables([pending, table.cast(pending.schema)])
        rows += table.num_rows
        while pending.num_rows >= ROWS_PER_FILE:
            write_file(pending.slice(0, ROWS_PER_FILE))
            pending = pending.slice(ROWS_PER_FILE)
    if pending is not None and pending.num_rows:
        write_file(pending)
    return {"rows": rows, "files": files}


def ensure_tokens(job: JobConfig, prepared: Path) -> tuple[Path, bool]:
    """``(token cache folder, hit)`` for ``prepared`` under ``job``; tokenises (Ray Data actors,
    every split) on a miss. Needs Ray running on a miss."""
    from distrec.data import storage
    from distrec.model.backbone import load_tokenizer
    from distrec.train.data_stream import tokenized_splits

    manifest = storage.read_manifest(prepared)
    key = cache_key(job, manifest, load_tokenizer(job.model))
    target = cache_dir(job, key)
    if atomic.is_complete(target, (MANIFEST,)):
        print(f"token cache: hit {target} (no tokenisation)", flush=True)
        return target, True
    splits = list(manifest["splits"])

    def build(tmp: Path) -> None:
        started = time.perf_counter()
        datasets = tokenized_splits(job, prepared, splits)
        entries = {name: write_split(datasets[name].iter_batches(batch_format="numpy", batch_size=4096), tmp / name)
                   for name in splits}
        info = {"key": key, "prepared": str(prepared), "splits": entries,
                "tokenize_s": round(time.perf_counter() - started, 3)}
        atomic.write_json(tmp / MANIFEST, info)

    print(f"token cache: miss, tokenising {prepared} -> {target}", flush=True)
    atomic.ensure_folder(target, build, (MANIFEST,), "token cache")
    return target, False


def split_files(job: JobConfig, prepared: Path, splits: list[str]) -> dict[str, list[str]]:
    """The row shards of each split, in row order: token shards for a causal LM, id rows
    (:mod:`distrec.train.id_rows`) for the DIN and EIMF, built first on a miss. Every
    worker reads its own rows from them (:class:`~distrec.train.row_source.ShardRows`), so the
    cache folder must be on storage every node mounts, as the prepared folders are."""
    if job.model.kind != "causal_lm":
        from distrec.train.id_rows import ensure_id_rows

        folder = ensure_id_rows(job, prepared)
    else:
        folder, _ = ensure_tokens(job, prepared)
    entries = json.loads((folder / MANIFEST).read_text())["splits"]
    return {s: [str(folder / s / f) for f in entries[s]["files"]] for s in splits}
