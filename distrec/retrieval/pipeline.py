"""SUBR over a prepared dataset with Ray Data: prepared folder in, retrieval-augmented folder out.

:func:`build_retrieval` encodes the item table (through the embedding cache; a Ray Data actor
pool on a miss), builds the item space once on the driver (PCA, normalisation), then streams
every split's sample shards through one actor pool (blocks of one batch put into the object
store by the driver -> ``map_batches`` with :class:`SubrActor`, ``num_cpus=0.5`` each) that holds the item vectors
(shipped once through the object store) and calls :func:`~distrec.retrieval.subr.retrieve_table`.

The output is a new prepared folder (``distrec.data.storage.write_prepared``: atomic, manifest
last) with the same splits, rows, row order and columns plus ``history_indices:
list<int32>``, the same items/users tables, and a manifest that keeps the source's
``dataset/task/config/source/stats`` and adds ``subr``: the SUBR config, the encoder (spec,
cache id, dim), the item-space info (PCA components, explained variance), the scoring path,
the source folder and its split hashes. Rows come back in order (``preserve_order``); the
sample ids are checked against the source before anything is written.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from distrec.data import storage
from distrec.errors import DataError
from distrec.retrieval.subr import (
    ItemSpace,
    SubrConfig,
    build_space,
    resolve_method,
    retrieve_table,
)

_KEEP_META = ("dataset", "task", "config", "source", "stats")


class SubrActor:
    """Ray Data actor: holds the item space, adds ``history_indices`` to batches of samples."""

    def __init__(self, space_ref: list, cfg: dict) -> None:
        import ray

        self.space: ItemSpace = ray.get(space_ref[0])
        self.cfg = SubrConfig(**cfg)
        if self.cfg.order != "recent" and resolve_method(self.space, self.cfg) == "matrix":
            self.space.matrix()  # once per actor, not per batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        return retrieve_table(batch, self.space, self.cfg)


def _split_files(root: Path, manifest: dict[str, Any]) -> dict[str, list[str]]:
    return {name: [str(root / f["path"]) for f in s["files"]] for name, s in manifest["splits"].items()}


def _num_shards(manifest: dict[str, Any]) -> int:
    cfg_shards = (manifest.get("config") or {}).get("num_shards")
    if isinstance(cfg_shards, int) and cfg_shards > 0:
        return cfg_shards
    return max(1, max(len(s["files"]) for s in manifest["splits"].values()))


def run_subr_ray(
    files_by_split: dict[str, list[str]],
    space: ItemSpace,
    cfg: SubrConfig,
    n_actors: int = 1,
) -> dict[str, pa.Table]:
    """Every split's shards through one SUBR actor pool; returns split -> table in file order.

    Files must follow the prepared layout (``<split>/part-*.parquet``); a split with no rows
    is absent from the result.
    """
    import pyarrow.parquet as pq
    import ray
    import ray.data

    from distrec.data.ray_data import quiet_ray_data

    quiet_ray_data()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    # The driver reads the shards and puts them into the object store in blocks of one
    # actor batch: Ray Data's own Parquet read lists files in a task and reads small files as
    # one block, which then needs a repartition barrier; on ML-1M-sized inputs those two
    # cost several times the retrieval itself (jobs/bench/RESULTS.md).
    refs = []
    for file in (f for fs in files_by_split.values() for f in fs):
        table = pq.read_table(file)
        table = table.append_column("path", pa.array([file] * table.num_rows, pa.string()))
        refs += [ray.put(table.slice(lo, cfg.batch_size)) for lo in range(0, table.num_rows, cfg.batch_size)]
    if not refs:
        return {}
    space_ref = ray.put(space)
    ds = ray.data.from_arrow_refs(refs).map_batches(
        SubrActor,
        fn_constructor_kwargs={"space_ref": [space_ref], "cfg": dataclasses.asdict(cfg)},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=max(1, int(n_actors))),
        num_cpus=0.5,
    )
    out: dict[str, list[pa.Table]] = {name: [] for name in files_by_split}
    for block in ray.get(ds.to_arrow_refs()):
        if block.num_rows == 0:
            continue
        paths = block.column("path").to_numpy(zero_copy_only=False)
        # A block may span a file boundary: cut it where the path changes (order is preserved).
        cuts = np.flatnonzero(paths[1:] != paths[:-1]) + 1
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(paths)]):
            part = block.slice(int(lo), int(hi - lo)).drop_columns(["path"])
            name = Path(str(paths[lo])).parent.name  # prepared layout: <split>/part-*.parquet
            if name not in out:
                raise DataError(f"SUBR pipeline: Ray Data returned rows from an unknown file {paths[lo]}")
            out[name].append(part)
    return {name: pa.concat_tables(parts) for name, parts in out.items() if parts}


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

    space: ItemSpace | None = None
    encoder_info: dict[str, Any]
    if item_vectors is not None:
        ids, vectors = item_vectors
        encoder_info = {"spec": "given", "dim": int(np.asarray(vectors).shape[1])}
    elif cfg.order != "recent":
        from distrec.retrieval.encoders import encode_items

        ids, vectors, encoder_info = encode_items(
            items,
            manifest.get("dataset"),
            spec=cfg.encoder,
            n_actors=encode_actors or n_actors,
            genres=cfg.item_text_genres,
            batch_size=cfg.encode_batch_size,
            use_cache=use_cache,
        )
    else:
        ids = items.column("item_id").to_numpy().astype(np.int64)
        vectors = np.zeros((ids.size, 1), dtype=np.float32)
        encoder_info = {"spec": None, "note": "order='recent' needs no vectors"}
    space = build_space(ids, vectors, dataclasses.replace(cfg, pca_dim=None) if cfg.order == "recent" else cfg)
    encoded_s = time.perf_counter() - started

    files = _split_files(src, manifest)
    t0 = time.perf_counter()
    splits = run_subr_ray(files, space, cfg, n_actors=n_actors)
    retrieve_s = time.perf_counter() - t0

    for name in files:
        if name not in splits:  # an empty split yields no rows: keep its schema
            splits[name] = retrieve_table(storage.open_split(src, name), space, cfg)
    splits = {name: splits[name] for name in files}
    for name, table in splits.items():
        expected = manifest["splits"][name]["rows"]
        if table.num_rows != expected:
            raise DataError(f"SUBR pipeline: split '{name}' came back with {table.num_rows} rows, expected {expected}")
        if expected and "sample_id" in table.column_names:
            source_ids = storage.open_split(src, name).column("sample_id")
            if not table.column("sample_id").equals(source_ids):
                raise DataError(f"SUBR pipeline: split '{name}' came back out of order")
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
    meta = {k: manifest[k] for k in _KEEP_META if k in manifest}
    meta["subr"] = subr_meta
    storage.write_prepared(
        out,
        splits,
        items=items,
        users=users,
        meta=meta,
        num_shards=_num_shards(manifest),
        overwrite=overwrite,
    )
    return out
