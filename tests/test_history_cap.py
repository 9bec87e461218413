"""``data.max_history_stored``: a job-config key, passed by ``prepare`` to the CTR builder."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_custom_dataset import all_samples, write

from distrec.config import DataConfig, load_job_config
from distrec.data import samples as samples_module
from distrec.data.loaders import load_dataset
from distrec.data.prepare import config_hash, config_key, prepare
from distrec.errors import ConfigError, DataError

ITEMS = {"item_id": [f"i{n}" for n in range(1, 9)], "title": [f"T{n}" for n in range(1, 9)]}
# User u rates i1..i8 at times 1..8; user v rates i1, i2 at times 10, 11.
INTERACTIONS = {
    "user_id": ["u"] * 8 + ["v", "v"],
    "item_id": [f"i{n}" for n in range(1, 9)] + ["i1", "i2"],
    "timestamp": list(range(1, 9)) + [10, 11],
    "rating": [5] * 10,
}


def test_prepare_stores_only_the_most_recent_n(tmp_path: Path) -> None:
    folder = write(tmp_path / "raw", {"items": ITEMS, "interactions": INTERACTIONS})
    cfg = DataConfig(dataset="custom", raw_path=str(folder), min_history=1, num_shards=1,
                     split=[0.5, 0.25, 0.25], label_threshold=4.0, max_history_stored=3)
    out, _ = prepare(cfg, out=tmp_path / "out", progress=False)
    got = [(r["user_id"], r["timestamp"], r["history_item_ids"]) for r in all_samples(out)]
    # Item iN has id N-1. u's sample at time t holds the items of times max(1, t-3)..t-1.
    assert got == [
        (0, 2, [0]), (0, 3, [0, 1]), (0, 4, [0, 1, 2]), (0, 5, [1, 2, 3]), (0, 6, [2, 3, 4]),
        (0, 7, [3, 4, 5]), (0, 8, [4, 5, 6]), (1, 11, [0]),
    ]


def test_config_key_changes_with_the_cap() -> None:
    base = DataConfig()
    assert base.max_history_stored == 64
    assert config_key(DataConfig(max_history_stored=3))["max_history_stored"] == 3
    assert config_hash(DataConfig(max_history_stored=3)) != config_hash(base)
    assert config_hash(DataConfig(max_history_stored=None)) != config_hash(base)
    assert load_job_config(None, ["data.max_history_stored=null"]).data.max_history_stored is None
    with pytest.raises(ConfigError, match="data.max_history_stored must be >= 1"):
        load_job_config(None, ["data.max_history_stored=0"])


def test_overflow_error_names_the_config_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tables = load_dataset("custom", write(tmp_path, {"items": ITEMS, "interactions": INTERACTIONS}))
    # Full histories hold 0+1+...+7 (u) + 1 (v) = 29 entries; pretend a list holds only 20.
    monkeypatch.setattr(samples_module, "_MAX_LIST_VALUES", 20)
    with pytest.raises(DataError, match=r"histories hold 29 entries.*cap them with the config key data\.max_history_stored"):
        samples_module.build_ctr_samples(tables, min_history=1, label_threshold=4.0)
    capped = samples_module.build_ctr_samples(tables, min_history=1, label_threshold=4.0, max_history_stored=2)
    assert capped.num_rows == 8  # 1+2+2*5 + 1 = 14 entries fit
