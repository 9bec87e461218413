"""SUBR over a prepared dataset with Ray Data: prepared folder in, retrieval-augmented folder out.

:func:`build_retrieval` encodes the item table (through the embedding cache; a Ray Data actor
pool on a miss), builds the item space once on the driver (PCA, normalisation), then cuts every
split's source shards into row-range tasks (:func:`shard_tasks`) and runs them in one actor pool
(:class:`SubrActor`, ``num_cpus=0.5`` each, the item space shipped once through the object
store): each task reads its rows, calls :func:`~distrec.retrieval.subr.retrieve_table` and
writes one output shard into the staged folder; the driver checks every split's row count.

The output is a new prepared folder (written atomically by ``distrec.data.storage``: staged
folder, manifest last, then renamed) with the same splits, rows, row order and columns plus
``history_indices: list<int32>``, the same items/users tables, and a manifest that keeps the
source's ``dataset/task/config/source/stats`` and adds ``subr``: the SUBR config, the encoder
(spec, cache id, dim), the item-space info (PCA components, explained variance), the scoring
path, the source folder and its split hashes. Any failure removes the staged folder.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distrec.data import storage
from distrec.errors import DataError
from distrec.config.subr import SubrConfig
from distrec.retrieval.subr import (
    ItemSpace,
    build_space,
    resolve_method,
    retrieve_table,
)

_KEEP_META = ("dataset", "task", "config", "source", "stats")


class SubrActor:
    """Ray Data actor: holds the item space; per task, reads a row range of a source shard,
    adds ``history_indices`` and writes the result as one shard of the staged output folder.

    Reading and writing in the actors (not the driver) is what lets a second actor add
    throughput: the driver only lists tasks and writes the manifest. On a multi-node cluster
    the source and output folders must be on storage every node mounts (as the prepared
    folders that the training workers read already are).
    """

    def __init__(self, space_ref: list, cfg: dict, out_root: str) -> None:
        import ray

        self.space: ItemSpace = ray.get(space_ref[0])
        self.cfg = SubrConfig(**cfg)
        self.root = Path(out_root)
        self._source: tuple[str | None, pa.Table | None] = (None, None)
        if self.cfg.order != "recent" and resolve_method(self.space, self.cfg) == "matrix":
            self.space.matrix()  # once per actor, not per batch

    def _read(self, path: str) -> pa.Table:
        if self._source[0] != path:  # consecutive tasks usually share a source shard
            self._source = (path, pq.read_table(path))
        return self._source[1]

    def __call__(self, batch: pa.Table) -> pa.Table:
        entries = []
        for task in batch.to_pylist():
            rows = self._read(task["src"]).slice(task["lo"], task["hi"] - task["lo"])
            table = retrieve_table(rows, self.space, self.cfg)  # the same rows, in order, plus one column
            entries.append(json.dumps(storage.write_shard(self.root, task["rel"], table)))
        return pa.table({"rel": batch.column("rel"), "entry": pa.array(entries, pa.string())})


# Rows of one SUBR task: with 64 stored history entries a row, ~2 GiB of index arrays at most
# (ML-25M-shaped CTR samples in one task per shard held ~12 GB in one actor).
MAX_TASK_ROWS = 500_000


def shard_tasks(root: Path, manifest: dict[str, Any], n_actors: int, min_rows: int) -> list[dict[str, Any]]:
    """One task per output shard: ``{split, src, lo, hi, rel}``, splits and rows in order.

    Source shards are cut into row ranges of about ``total / (4·n_actors)`` rows (at least
    ``min_rows``, at most ``MAX_TASK_ROWS``), so every actor has work even when a split is one
    file and an actor's memory does not grow with the dataset; an empty source shard is one
    empty task (its schema survives).
    """
    total = sum(s["rows"] for s in manifest["splits"].values())
    chunk = min(MAX_TASK_ROWS, max(min_rows, -(-total // (4 * max(1, n_actors)))))
    tasks = []
    for name, split in manifest["splits"].items():
        bounds = [(str(root / f["path"]), lo, hi) for f in split["files"]
                  for lo, hi in storage.shard_bounds(f["rows"], max(1, -(-f["rows"] // chunk)))]
        tasks += [{"split": name, "src": src, "lo": lo, "hi": hi, "rel": f"{name}/part-{i:05d}.parquet"}
                  for i, (src, lo, hi) in enumerate(bounds)]
    return tasks


def run_subr_ray(tasks: list[dict[str, Any]], space: ItemSpace, cfg: SubrConfig, out_root: Path,
                 n_actors: int = 1) -> dict[str, dict[str, Any]]:
    """Run every task in one SUBR actor pool; returns ``rel -> storage.write_shard`` entry."""
    import ray
    import ray.data

    from distrec.data.ray_data import quiet_ray_data

    quiet_ray_data()
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks)).map_batches(
        SubrActor,
        fn_constructor_kwargs={"space_ref": [ray.put(space)], "cfg": dataclasses.asdict(cfg), "out_root": str(out_root)},
        batch_size=1,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=max(1, int(n_actors))),
        num_cpus=0.5,
    )
    return {row["rel"]: json.loads(row["entry"]) for row in ds.take_all()}


def build_retrieval(
    prepared_dir: str | Path,
    out_dir: str | Path,
    cfg: SubrConfig,
    n_actors: int = 1,
    item_vectors: tuple[np.ndarray, np.ndarray] | None = None,
    overwrite: bool = False,
    use_cache: bool = True,
    encode_actors: int | None = None,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Write the retrieval-augmented copy of ``prepared_dir`` to ``out_dir``; returns ``out_dir``.

    ``item_vectors``: raw ``(item_ids, vectors)`` to use instead of encoding the item table
    with ``cfg.encoder`` (e.g. precomputed LLM embeddings). ``encode_actors``: size of the
    encoding actor pool on a cache miss (default ``n_actors``; each actor loads the encoder,
    and takes a GPU when the cluster has them). ``extra_meta`` is merged into the manifest's
    ``subr`` entry (e.g. the caller's cache key). Needs Ray (joins or starts one
    with ``ray.init()`` defaults when none is running). Raises DataError when ``out_dir``
    exists and ``overwrite`` is False (checked before any work).
    """
    import ray

    src, out = Path(prepared_dir), Path(out_dir)
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists (pass overwrite=True to replace it)")
    if src.resolve() == out.resolve():
        raise DataError(f"{out}: the output folder must differ from the source folder")
    manifest = storage.read_manifest(src)
    items = storage.open_table(src, "items")
    users = storage.open_table(src, "users")
    if not ray.is_initialized():
        ray.init()
    started = time.perf_counter()

    space, encoder_info = item_space(items, manifest.get("dataset"), cfg, item_vectors=item_vectors,
                                     encode_actors=encode_actors or n_actors, use_cache=use_cache)
    encoded_s = time.perf_counter() - started

    tasks = shard_tasks(src, manifest, n_actors, cfg.batch_size)
    meta = {k: manifest[k] for k in _KEEP_META if k in manifest}
    with storage.staged_folder(out, overwrite, required=(storage.MANIFEST,)) as tmp:
        for name in manifest["splits"]:
            (tmp / name).mkdir()
        t0 = time.perf_counter()
        shards = run_subr_ray(tasks, space, cfg, tmp, n_actors=n_actors)
        retrieve_s = time.perf_counter() - t0
        entries = {name: storage.split_entry([shards[t["rel"]] for t in tasks if t["split"] == name])
                   for name in manifest["splits"]}
        for name, entry in entries.items():
            expected = manifest["splits"][name]["rows"]
            if entry["rows"] != expected:
                raise DataError(f"SUBR pipeline: split '{name}' came back with {entry['rows']} rows, expected {expected}")
        subr_meta = {
            "config": dataclasses.asdict(cfg),
            "encoder": encoder_info,
            "item_space": space.info,
            "method": resolve_method(space, cfg) if cfg.order != "recent" else None,
            "n_actors": int(n_actors),
            "encode_actors": int(encode_actors or n_actors),
            "source_prepared": str(src.resolve()),
            "source_splits_sha256": {name: s["sha256"] for name, s in manifest["splits"].items()},
            "timings_s": {"encode_and_space": round(encoded_s, 3), "retrieve": round(retrieve_s, 3)},
            **(extra_meta or {}),
        }
        meta["subr"] = subr_meta
        storage.write_manifest(tmp, entries, items=items, users=users, meta=meta)
    return out


def item_space(items: pa.Table, dataset: str | None, cfg: SubrConfig, *,
               item_vectors: tuple[np.ndarray, np.ndarray] | None = None, encode_actors: int = 1,
               use_cache: bool = True) -> tuple[ItemSpace, dict[str, Any]]:
    """``(item space, encoder info)`` of an item table: its vectors (``item_vectors``, else
    ``cfg.encoder`` through the embedding cache) after PCA and normalisation. Deterministic, so
    ``distrec predict`` rebuilds the space a run's SUBR folder was made with."""
    if item_vectors is not None:
        ids, vectors = item_vectors
        encoder_info = {"spec": "given", "dim": int(np.asarray(vectors).shape[1])}
    elif cfg.order != "recent":
        from distrec.retrieval.encoders import encode_items

        ids, vectors, encoder_info = encode_items(
            items,
            dataset,
            spec=cfg.encoder,
            n_actors=encode_actors,
            genres=cfg.item_text_genres,
            batch_size=cfg.encode_batch_size,
            use_cache=use_cache,
        )
    else:
        ids = items.column("item_id").to_numpy().astype(np.int64)
        vectors = np.zeros((ids.size, 1), dtype=np.float32)
        encoder_info = {"spec": None, "note": "order='recent' needs no vectors"}
    return build_space(ids, vectors, dataclasses.replace(cfg, pca_dim=None) if cfg.order == "recent" else cfg), encoder_info
