"""The rows of the id-based models (DIN, EIMF): a prepared folder cut to what they read, cached like tokens.

Per sample: ``sample_id, user_id, item_id``, ``label`` (CTR samples) and ``history_ids`` (its
last ``hist_len`` history items, oldest first: ``crm.hist_len`` for the DIN, the retrieved
ones on a SUBR folder with ``crm.history: retrieved``; ``eimf.backbone.max_len`` for EIMF),
written as the token cache writes its shards (Arrow IPC, 128-row record batches,
:func:`~distrec.train.token_cache.write_split`) so that every rank reads only its own rows
through :class:`~distrec.train.row_source.ShardRows`. Folder:
``$DISTREC_HOME/tokens/<dataset>-<kind>-<key>/``, keyed by the prepared splits' sha256,
``hist_len`` and ``history``; published whole, built once when several drivers race.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distrec import atomic, paths
from distrec.config import JobConfig
from distrec.train.token_cache import MANIFEST, write_split

FORMAT = 2  # 2: token_cache.write_split's exact batches, recorded in the schema metadata
COLUMNS = ("sample_id", "user_id", "item_id", "history_item_ids")


def history_spec(job: JobConfig) -> tuple[int, str]:
    """``(hist_len, history)`` the job's model reads."""
    if job.model.kind == "eimf":
        return job.eimf.backbone.max_len, "recent"
    return job.crm.hist_len, job.crm.history


def id_rows_dir(job: JobConfig, prepared_manifest: dict) -> tuple[Path, dict]:
    """``(folder, key)`` of the id rows of a prepared folder for ``job.model.kind``."""
    hist_len, history = history_spec(job)
    key = {"format": FORMAT, "splits": {n: s["sha256"] for n, s in prepared_manifest["splits"].items()},
           "hist_len": hist_len, "history": history}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return paths.distrec_home() / "tokens" / f"{job.data.dataset}-{job.model.kind}-{digest}", key


def _batches(files: list[Path], hist_len: int, history: str) -> Iterator[dict[str, np.ndarray]]:
    from distrec.model.crm.history import history_matrix

    for f in files:
        shard = pq.ParquetFile(f)
        columns = [*COLUMNS, *(c for c in ("label", "history_indices") if c in shard.schema_arrow.names)]
        for batch in shard.iter_batches(batch_size=4096, columns=columns):
            table = pa.Table.from_batches([batch])
            ids, mask = history_matrix(table, hist_len, history)
            history_ids = np.empty(len(ids), dtype=object)
            history_ids[:] = [row[m] for row, m in zip(ids, mask)]
            out = {name: table.column(name).to_numpy() for name in ("sample_id", "user_id", "item_id")}
            if "label" in table.column_names:
                out["label"] = table.column("label").to_numpy().astype(np.int8)
            yield {**out, "history_ids": history_ids}


def ensure_id_rows(job: JobConfig, prepared: Path) -> Path:
    """The id rows folder of ``prepared`` (every split), built on a miss; DataError from the
    history rules (:func:`~distrec.model.crm.history.history_matrix`) names the folder."""
    from distrec.data import storage
    from distrec.errors import DataError

    manifest = storage.read_manifest(prepared)
    target, key = id_rows_dir(job, manifest)
    if atomic.is_complete(target, (MANIFEST,)):
        return target

    def build(tmp: Path) -> None:
        started = time.perf_counter()
        entries = {}
        for name in manifest["splits"]:
            files = sorted((prepared / name).glob("part-*.parquet"))
            try:
                entries[name] = write_split(_batches(files, key["hist_len"], key["history"]), tmp / name)
            except DataError as exc:
                raise DataError(f"{prepared / name}: {exc}") from None
        atomic.write_json(tmp / MANIFEST, {"key": key, "prepared": str(prepared), "splits": entries,
                                           "build_s": round(time.perf_counter() - started, 3)})

    atomic.ensure_folder(target, build, (MANIFEST,), f"{job.model.kind} rows")
    return target
