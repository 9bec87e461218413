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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from distrec import atomic, paths
from distrec.config import JobConfig

MANIFEST = "manifest.json"
FORMAT = 3  # 3: Arrow IPC files in BATCH_ROWS-row record batches
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


def _write_split(ds, folder: Path) -> dict[str, Any]:
    """One split as Arrow IPC files of ``ROWS_PER_FILE`` rows in record batches of ``BATCH_ROWS``."""
    folder.mkdir(parents=True)
    files, rows, writer, sink, written, schema = [], 0, None, None, 0, None
    for batch in ds.iter_batches(batch_format="numpy", batch_size=4096):
        table = _arrow(batch)
        schema = schema or table.schema
        if writer is None or written >= ROWS_PER_FILE:
            if writer is not None:
                writer.close()
                sink.close()
            files.append(f"part-{len(files):05d}.arrow")
            sink = pa.OSFile(str(folder / files[-1]), "wb")
            writer, written = ipc.new_file(sink, schema), 0
        writer.write_table(table.cast(schema), max_chunksize=BATCH_ROWS)
        written += table.num_rows
        rows += table.num_rows
    if writer is not None:
        writer.close()
        sink.close()
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
        entries = {name: _write_split(datasets[name], tmp / name) for name in splits}
        info = {"key": key, "prepared": str(prepared), "splits": entries,
                "tokenize_s": round(time.perf_counter() - started, 3)}
        atomic.write_json(tmp / MANIFEST, info)

    print(f"token cache: miss, tokenising {prepared} -> {target}", flush=True)
    atomic.ensure_folder(target, build, (MANIFEST,), "token cache")
    return target, False


def split_files(job: JobConfig, prepared: Path, splits: list[str]) -> dict[str, list[str]]:
    """The token shards of each split, in row order (building the cache first on a miss); every
    worker reads its own rows from them (:class:`~distrec.train.row_source.ShardRows`), so the
    cache folder must be on storage every node mounts, as the prepared folders are."""
    folder, _ = ensure_tokens(job, prepared)
    entries = json.loads((folder / MANIFEST).read_text())["splits"]
    return {s: [str(folder / s / f) for f in entries[s]["files"]] for s in splits}
