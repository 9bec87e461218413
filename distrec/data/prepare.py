"""``prepare``: raw dataset -> samples -> chronological split -> subsets -> prepared folder.

One call turns a :class:`~distrec.config.DataConfig` into a prepared folder (see
``distrec.data.storage`` for the layout) and returns ``(folder, manifest)``. The default
folder is ``$DISTREC_HOME/prepared/<dataset>-<task>-<hash>``, where ``<hash>`` covers only the
config fields that change the output (:func:`config_key`), so a different ``raw_path`` or
an unrelated field does not force a rebuild, and :func:`is_prepared` lets callers skip work.

The item and user tables written are restricted to the ids that occur in the interactions
used (after the k-core filter, for the generative task), so they form the catalogue.

Titles are cleaned here, for every dataset (:func:`distrec.data.titles.clean_titles`): markup
is stripped, and items whose title is missing, blank or only markup/script are dropped with
their interactions, so no worker ever meets such a title. The manifest's ``stats`` count them
(``title_cleaning``) next to the rows the loader left out on purpose (``loader_dropped``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from distrec import paths
from distrec.config import DataConfig
from distrec.data import storage
from distrec.data.kcore import iterative_kcore
from distrec.data.negatives import add_sampled_negatives
from distrec.data.samples import build_ctr_samples, build_generative_samples
from distrec.data.schema import INTERACTIONS, CanonicalTables, conform
from distrec.data.split import apply_subsets, chronological_split
from distrec.errors import DataError

_COMMON_FIELDS = ("dataset", "task", "split", "num_shards", "train_size", "valid_size", "test_size", "seed")
_TASK_FIELDS = {
    "ctr": ("min_history", "label_threshold", "label_rule", "negatives_per_positive", "max_history_stored"),
    "generative": ("max_history", "kcore"),
}
# Version of the title rules (distrec.data.titles) in the config key: a change re-prepares.
TITLE_RULES = 1
# 1: prepared folders hold the interaction log (the ``interactions`` table) for ``distrec predict``.
INTERACTION_LOG = 1


def config_key(cfg: DataConfig) -> dict[str, Any]:
    """The config fields that determine the prepared output for ``cfg.task``, plus the format version."""
    if cfg.task not in _TASK_FIELDS:
        raise DataError(f"data.task must be one of {sorted(_TASK_FIELDS)}, got {cfg.task!r}")
    fields = _COMMON_FIELDS + _TASK_FIELDS[cfg.task]
    return {"format_version": storage.FORMAT_VERSION, "title_rules": TITLE_RULES, "interaction_log": INTERACTION_LOG,
            **{f: getattr(cfg, f) for f in fields}}


def config_hash(cfg: DataConfig) -> str:
    """10 hex chars of sha256 over :func:`config_key` (sorted-key JSON)."""
    blob = json.dumps(config_key(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def default_out(cfg: DataConfig) -> Path:
    """``cfg.prepared_dir`` if set, else ``prepared_root()/<dataset>-<task>-<config_hash>``."""
    if cfg.prepared_dir:
        return Path(cfg.prepared_dir).expanduser()
    return paths.prepared_root() / f"{cfg.dataset}-{cfg.task}-{config_hash(cfg)}"


def is_prepared(path: Path, cfg: DataConfig) -> bool:
    """True when ``path`` holds a complete prepared dataset built from an equivalent config."""
    try:
        manifest = storage.read_manifest(Path(path))
    except DataError:
        return False
    return manifest.get("config_key") == json.loads(json.dumps(config_key(cfg), default=str))


def _raw_folder(cfg: DataConfig, raw_path: Path | None) -> Path:
    if raw_path is not None:
        return Path(raw_path)
    if cfg.raw_path:
        return Path(cfg.raw_path).expanduser()
    if cfg.dataset == "custom":
        raise DataError("dataset 'custom' reads your own files: pass --raw-path DIR or set data.raw_path")
    from distrec.data.fetch import fetch

    return Path(fetch(cfg.dataset))


def _restrict(table: pa.Table, key: str, ids: pa.Array) -> pa.Table:
    """Rows of ``table`` whose ``key`` is in ``ids`` (the catalogue actually used)."""
    return table.filter(pc.is_in(table.column(key), value_set=ids))


def _threshold(cfg: DataConfig, default_rule) -> float | None:
    """CTR: label = rating >= the returned threshold; None for ``implicit`` (every
    interaction is a positive). ``column``: the canonical rating is the 0/1 label, so 1."""
    if cfg.label_rule == "implicit":
        return None
    if cfg.label_rule == "column":
        return 1.0
    return cfg.label_threshold if cfg.label_threshold is not None else default_rule(cfg.dataset)


def _filters(cfg: DataConfig) -> str:
    return ", ".join(f"{k}={getattr(cfg, k)}" for k in _TASK_FIELDS[cfg.task])


def prepare(
    cfg: DataConfig,
    out: Path | None = None,
    raw_path: Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Build the prepared dataset for ``cfg`` and return ``(folder, manifest)``.

    Raw folder: ``raw_path``, else ``cfg.raw_path``, else ``distrec.data.fetch.fetch(cfg.dataset)``.
    Output: ``out``, else :func:`default_out`. If the output already holds this config
    (:func:`is_prepared`) and ``overwrite`` is False, it is returned as is. Raises DataError
    when a split is empty after filtering or the output exists for another config.
    """
    from distrec.data.loaders import dropped_rows, label_rule, load_dataset
    from distrec.data.titles import clean_titles

    key = config_key(cfg)
    out = Path(out) if out is not None else default_out(cfg)
    if not overwrite and is_prepared(out, cfg):
        return out, storage.read_manifest(out)
    if not overwrite and out.exists():
        raise DataError(f"{out} exists but holds another config or is incomplete; pass overwrite=True to replace it")
    where = f"{cfg.dataset} ({cfg.task}; {_filters(cfg)})"

    with tqdm(total=5, desc=f"prepare {cfg.dataset}-{cfg.task}", disable=not progress) as bar:
        raw = _raw_folder(cfg, raw_path)
        bar.set_postfix_str("load")
        tables: CanonicalTables = load_dataset(cfg.dataset, raw, cfg.label_rule)
        n_raw = tables.interactions.num_rows
        loader_dropped = dropped_rows(tables)
        tables, title_counts = clean_titles(tables)
        bar.update()

        bar.set_postfix_str("samples")
        if cfg.task == "ctr":
            threshold = _threshold(cfg, label_rule)
            samples = build_ctr_samples(tables, min_history=cfg.min_history,
                                        label_threshold=-np.inf if threshold is None else threshold,
                                        max_history_stored=cfg.max_history_stored)
            if cfg.label_rule == "implicit":
                samples = add_sampled_negatives(samples, tables.interactions, cfg.negatives_per_positive, cfg.seed)
        else:
            threshold = None
            tables = dataclasses.replace(tables, interactions=iterative_kcore(tables.interactions, cfg.kcore))
            samples = build_generative_samples(tables, max_history=cfg.max_history)
        if samples.num_rows == 0:
            raise DataError(f"{where}: no samples, the dataset is empty after filtering")
        bar.update()

        bar.set_postfix_str("split")
        splits = chronological_split(samples, cfg.split, where=where)
        sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
        splits = apply_subsets(splits, sizes, cfg.seed, where=where)
        bar.update()

        bar.set_postfix_str("catalogue")
        inter = tables.interactions
        user_ids = pc.unique(inter.column("user_id"))
        item_ids = pc.unique(inter.column("item_id"))
        stats = {
            "raw_interactions": n_raw,
            "interactions": inter.num_rows,
            "users": len(user_ids),
            "items": len(item_ids),
            "samples": samples.num_rows,
            "label_threshold": threshold,
            "label_rule": cfg.label_rule if cfg.task == "ctr" else None,
            "title_cleaning": title_counts,
            "loader_dropped": loader_dropped,
        }
        bar.update()

        bar.set_postfix_str("write")
        manifest = storage.write_prepared(
            out,
            splits,
            items=_restrict(tables.items, "item_id", item_ids),
            users=_restrict(tables.users, "user_id", user_ids),
            meta={
                "dataset": cfg.dataset,
                "task": cfg.task,
                "config": dataclasses.asdict(cfg),
                "config_key": json.loads(json.dumps(key, default=str)),
                "source": tables.source,
                "stats": stats,
            },
            num_shards=cfg.num_shards,
            overwrite=overwrite,
            interactions=conform(inter, INTERACTIONS, f"{where} [interactions]"),
        )
        bar.update()
    return out, manifest
