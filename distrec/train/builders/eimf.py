"""EIMF in the one loop: IBIM (+ ESIM heads when ``eimf.labels`` names a labels table) built
whole on every rank (ZeRO stage 0: plain data parallel), trained with
:class:`~distrec.objectives.eimf.EimfTask`, exported as an EIMF stage folder
(:mod:`distrec.model.interests.artefact`) under ``<run>/eimf``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from distrec.train.builders import Built, whole_model_export
from distrec.train.row_source import ShardRows


def build_eimf(job, strategy, loop_config: dict) -> Built:
    from distrec.model.interests.artefact import save_eimf
    from distrec.model.interests.backbones import ItemIndex
    from distrec.model.interests.eimf import SemanticBank, build_model, build_sampler
    from distrec.objectives.eimf import EimfTask

    cfg = job.eimf
    index = ItemIndex.from_items(pq.read_table(Path(loop_config["prepared_dir"]) / "items.parquet"))
    bank = SemanticBank(pq.read_table(cfg.labels)) if cfg.labels else None
    model = build_model(index.num_items, cfg, bank.dim if bank is not None else None).to(strategy.device)
    train_files = loop_config["token_files"].get("train", [])
    targets = index.rows(ShardRows(train_files).column("item_id"), where="train item_id") if train_files else np.ones(1, np.int64)
    sampler = build_sampler(cfg, index.num_items, targets)  # the same seeded negatives on every rank

    def export(run_dir: Path) -> None:
        whole_model_export(strategy, run_dir / "eimf", lambda tmp: save_eimf(model, index, cfg, tmp))

    return Built(model=model, task=EimfTask(cfg, index, sampler, bank, strategy.device), export=export)
