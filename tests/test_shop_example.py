"""The README's "your own logs" walk-through, end to end: examples/shop -> train -> predict -> export.

Truth: the run's own test predictions (predict must reproduce them from the shop's own text ids
and timestamps), the examples' CSV files (the keys that go in come out unchanged), and a plain
``AutoModelForCausalLM`` load of the export.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from distrec.cli import app
from distrec.config import load_job_config
from distrec.data import storage
from distrec.train.artefacts import ensure_prepared
from distrec.train.launcher import run_job

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[1]
SHOP = REPO / "examples" / "shop"


@pytest.fixture(scope="module")
def shop_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("shop")
    job = load_job_config(REPO / "jobs" / "shop.yaml",
                          [f"ray.storage_path={root}", "ray.run_name=shop", f"data.raw_path={SHOP}"])
    return job, run_job(job)


def test_the_shop_trains_on_every_sample_of_its_own_logs(shop_run):
    job, result = shop_run
    manifest = storage.read_manifest(ensure_prepared(job))
    n_logged = len((SHOP / "interactions.csv").read_text().splitlines()) - 1
    assert manifest["stats"]["interactions"] == n_logged == 1440
    assert manifest["stats"]["users"] == 60 and manifest["stats"]["items"] == 48
    # min_history 5: every customer's first five ratings are history only.
    assert sum(s["rows"] for s in manifest["splits"].values()) == n_logged - 5 * 60
    assert result.metrics["test"]["n"] == manifest["splits"]["test"]["rows"]
    assert 0.0 < result.metrics["test"]["auc"] < 1.0


def test_predict_takes_the_shops_own_keys_and_reproduces_the_test_predictions(shop_run, tmp_path):
    job, result = shop_run
    folder = ensure_prepared(job)
    test = storage.open_split(folder, "test")
    users = dict(zip(storage.open_table(folder, "users").column("user_id").to_pylist(),
                     storage.open_table(folder, "users").column("source_id").to_pylist()))
    items = dict(zip(storage.open_table(folder, "items").column("item_id").to_pylist(),
                     storage.open_table(folder, "items").column("source_id").to_pylist()))
    rows = pa.table({"request": [f"r{i}" for i in range(test.num_rows)],
                     "user_id": [users[u] for u in test.column("user_id").to_pylist()],
                     "item_id": [items[i] for i in test.column("item_id").to_pylist()],
                     "timestamp": test.column("timestamp")})
    assert rows.column("user_id")[0].as_py().startswith("cust-") and rows.column("item_id")[0].as_py().startswith("SKU-")
    pq.write_table(rows, tmp_path / "rows.parquet")
    out = CliRunner().invoke(app, ["predict", "--run", str(result.run_dir), "--input", str(tmp_path / "rows.parquet"),
                                   "--out", str(tmp_path / "scored")])
    assert out.exit_code == 0, out.output
    got = pq.read_table(tmp_path / "scored")
    assert got.column("user_id").equals(rows.column("user_id")) and got.column("request").equals(rows.column("request"))
    want = pq.read_table(result.run_dir / "predictions_test.parquet").to_pandas().set_index("sample_id")
    np.testing.assert_allclose(got.column("p_yes").to_numpy(), want.loc[test.column("sample_id").to_pylist(), "p_yes"],
                               atol=1e-5)


def test_tonights_candidates_and_unknown_keys(shop_run, tmp_path):
    """No timestamp: each customer's whole log is the history. An unknown key is named."""
    _, result = shop_run
    rows = pa.table({"user_id": ["cust-003", "cust-004", "cust-999"], "item_id": ["SKU-140", "SKU-101", "SKU-101"]})
    pq.write_table(rows, tmp_path / "tonight.parquet")
    out = CliRunner().invoke(app, ["predict", "--run", str(result.run_dir), "--input", str(tmp_path / "tonight.parquet"),
                                   "--out", str(tmp_path / "a")])
    assert out.exit_code == 2 and "row 2: user_id 'cust-999' is not a key of the run's users table" in out.output
    out = CliRunner().invoke(app, ["predict", "--run", str(result.run_dir), "--input", str(tmp_path / "tonight.parquet"),
                                   "--out", str(tmp_path / "b"), "--on-bad-row", "skip"])
    assert out.exit_code == 0, out.output
    got = pq.read_table(tmp_path / "b")
    assert got.column("user_id").to_pylist() == ["cust-003", "cust-004"]
    assert all(0.0 < p < 1.0 for p in got.column("p_yes").to_pylist())
    manifest = json.loads((tmp_path / "b" / "_manifest.json").read_text())
    assert manifest["bad_rows"] == 1 and manifest["rows_out"] == 2


def test_export_of_the_shop_run_loads_as_a_plain_hf_model(shop_run, tmp_path):
    """The merged export loads with ``AutoModelForCausalLM`` and has the run's backbone shape
    (``tests/test_export.py`` checks its logits in a process without distrec)."""
    job, result = shop_run
    out = CliRunner().invoke(app, ["export", "--run", str(result.run_dir), "--merged", str(tmp_path / "merged")])
    assert out.exit_code == 0, out.output
    card = (tmp_path / "merged" / "README.md").read_text()
    assert "custom" in card and "distrec export --run" in card
    from transformers import AutoModelForCausalLM

    from distrec.model.backbone import resolve_model_dir

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    base = json.loads((resolve_model_dir(job.model) / "config.json").read_text())
    assert merged.config.num_hidden_layers == base["num_hidden_layers"]
    assert merged.config.hidden_size == base["hidden_size"]
    assert not any("lora" in name for name, _ in merged.named_parameters())  # merged, not wrapped
