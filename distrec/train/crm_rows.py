"""The DIN's training rows: a prepared CTR folder cut to what the CRM reads, cached like tokens.

Per sample: ``sample_id, user_id, item_id, label`` and ``history_ids`` (its last ``crm.hist_len``
history items, oldest first; the retrieved ones on a SUBR folder with ``crm.history:
retrieved``), written as the token cache writes its shards (Arrow IPC, 128-row record batches,
:func:`~distrec.train.token_cache.write_split`) so that every rank reads only its own rows
through :class:`~distrec.train.row_source.ShardRows`. Folder:
``$DISTREC_HOME/tokens/<dataset>-din-<key>/``, keyed by the prepared splits' sha256, ``hist_len``
and ``history``; published whole, built once when several drivers race.
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

FORMAT = 1
COLUMNS = ("sample_id", "user_id", "item_id", "label", "history_item_ids")


def crm_rows_dir(job: JobConfig, prepared_manifest: dict) -> tuple[Path, dict]:
    """``(folder, key)`` of the DIN rows of a prepared folder under ``job.crm``."""
    key = {"format": FORMAT, "splits": {n: s["sha256"] for n, s in prepared_manifest["splits"].items()},
           "hist_len": job.crm.hist_len, "history": job.crm.history}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return paths.distrec_home() / "tokens" / f"{job.data.dataset}-din-{digest}", key


def _batches(files: list[Path], hist_len: int, history: str) -> Iterator[dict[str, np.ndarray]]:
    from distrec.model.crm.history import history_matrix

    columns = [*COLUMNS, *(["history_indices"] if history == "retrieved" else [])]
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=4096, columns=columns):
            table = pa.Table.from_batches([batch])
            ids, mask = history_matrix(table, hist_len, history)
            history_ids = np.empty(len(ids), dtype=object)
            history_ids[:] = [row[m] for row, m in zip(ids, mask)]
            yield {"sample_id": table.column("sample_id").to_numpy(), "user_id": table.column("user_id").to_numpy(),
                   "item_id": table.column("item_id").to_numpy(),
                   "label": table.column("label").to_numpy().astype(np.int8), "history_ids": history_ids}


def ensure_crm_rows(job: JobConfig, prepared: Path) -> Path:
    """The DIN rows folder of ``prepared`` (every split), built on a miss; DataError from the
    history rules (:func:`~distrec.model.crm.history.history_matrix`) names the folder."""
    from distrec.data import storage
    from distrec.errors import DataError

    manifest = storage.read_manifest(prepared)
    target, key = crm_rows_dir(job, manifest)
    if atomic.is_complete(target, (MANIFEST,)):
        return target

    def build(tmp: Path) -> None:
        started = time.perf_counter()
        entries = {}
        for name in manifest["splits"]:
            files = sorted((prepared / name).glob("part-*.parquet"))
            try:
                entries[name] = write_split(_batches(files, job.crm.hist_len, job.crm.history), tmp / name)
            except DataError as exc:
                raise DataError(f"{prepared / name}: {exc}") from None
        atomic.write_json(tmp / MANIFEST, {"key": key, "prepared": str(prepared), "splits": entries,
                                           "build_s": round(time.perf_counter() - started, 3)})

    atomic.ensure_folder(target, build, (MANIFEST,), "DIN rows")
    return target
