"""The DIN CRM in the one loop: built whole on every rank (ZeRO stage 0, plain data parallel),
trained with :class:`~distrec.objectives.crm.DinTask`, exported as a DIN folder
(:mod:`distrec.model.crm.artefact`) under ``<run>/din``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from distrec.train.artefacts import din_config
from distrec.train.builders import Built, whole_model_export


def build_din(job, strategy, loop_config: dict) -> Built:
    from distrec.model.crm.artefact import write_din
    from distrec.model.crm.din import DIN
    from distrec.objectives.crm import DinTask

    cfg = din_config(job)
    items = pq.read_table(Path(loop_config["prepared_dir"]) / "items.parquet", columns=["item_id"])
    model = DIN(items.column("item_id").to_numpy().astype(np.int64), cfg).to(strategy.device)

    def export(run_dir: Path) -> None:
        whole_model_export(strategy, run_dir / "din", lambda tmp: write_din(tmp, model.state_dict(), cfg))

    return Built(model=model, task=DinTask(cfg.hist_len, strategy.device), export=export)
