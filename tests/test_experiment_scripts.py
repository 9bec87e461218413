"""The experiment scripts' own logic: row picking and the multi-seed EIMF summary (hand-computed)."""

from __future__ import annotations

import json

import pytest
from bench_scripts import load_bench

table_runs = load_bench("table_runs", "experiments")
eimf_seeds = load_bench("eimf_seeds", "experiments")

ROWS = {"a": ["x=1"], "b": ["x=2"], "c": ["x=3"]}


def test_pick_rows_keeps_table_order_and_names_bad_numbers():
    assert table_runs.pick_rows(ROWS, None) == ROWS
    assert list(table_runs.pick_rows(ROWS, "3,1")) == ["a", "c"]
    with pytest.raises(SystemExit, match=r"no row \[0, 4\]; rows are 1..3"):
        table_runs.pick_rows(ROWS, "4,0,2")


def _metrics(r: float) -> dict:
    return {"recall@20": r, "ndcg@20": r / 4, "recall@50": 2 * r, "ndcg@50": r / 2}


def _result(ibim: float, eimf: float, calls: int) -> dict:
    return {"ibim": {"test": _metrics(ibim)}, "eimf": {"test": _metrics(eimf)},
            "labelling": {"llm_calls": calls, "llm_time_s": 10.0}, "total_wall_s": 200.0}


def test_seed_table_rows_and_delta_mean_sd_by_hand(tmp_path):
    results = {43: _result(0.10, 0.13, 40), 42: _result(0.10, 0.11, 37)}  # Δ recall@20 = 0.03 and 0.01
    text = eimf_seeds.table(results)
    lines = text.splitlines()
    assert lines[2].startswith("| 42 | IBIM alone | 0.1000 | 0.0250 | 0.2000 | 0.0500 |")
    assert lines[3].startswith("| 42 | IBIM + ESIM | 0.1100 | 0.0275 | 0.2200 | 0.0550 | 37 | 10.0 | 200 |")
    # mean 0.02, sd sqrt(((0.01)^2 + (0.01)^2) / 1) = 0.0141; recall@50 doubles both
    assert lines[-1] == "| all 2 | Δ mean ± sd | +0.0200 ± 0.0141 | +0.0050 ± 0.0035 | +0.0400 ± 0.0283 | +0.0100 ± 0.0071 | | | |"
    (tmp_path / "seed7").mkdir()
    (tmp_path / "seed7" / "results.json").write_text(json.dumps(_result(0.2, 0.1, 3)))
    assert eimf_seeds.seed_results("unused.yaml", [], 7, tmp_path)["labelling"]["llm_calls"] == 3  # read, not re-run
