"""The SUBR throughput benchmark runs end to end on a tiny config and writes its block to a
file under tmp_path (never the repository's RESULTS.md)."""

from __future__ import annotations

import pytest
from bench_scripts import load_bench


@pytest.mark.ray
def test_bench_tiny_config_reports_and_appends_to_tmp(ray_local, tmp_path):
    bench = load_bench("subr_throughput")
    repo_results = bench.RESULTS
    before = repo_results.read_text() if repo_results.exists() else None
    out = tmp_path / "RESULTS.md"
    res = bench.main(["--catalogues", "ml1m,ml25m", "--items", "300", "--samples", "400", "--dim", "32",
                      "--max-len", "120", "--k", "10", "--ref-samples", "100", "--ray-samples", "300",
                      "--actors", "2", "--no-warmup", "--results", str(out)])
    assert {(r["catalogue"], r["method"]) for r in res["subr"]} >= {("ml1m", "matrix"), ("ml1m", "gather"), ("ml1m", "faiss")}
    assert all(r["samples_per_s"] > 0 and r["agree_pct"] == 100.0 for r in res["subr"])
    assert [(r["catalogue"], r["actors"]) for r in res["ray"]] == [("ml1m", 2)]
    text = out.read_text()
    assert text.count("## SUBR throughput") == 1 and "ReLLa reference" in text and "| 2 |" in text
    assert "Command: `" in text and "Versions: " in text
    assert (repo_results.read_text() if repo_results.exists() else None) == before


def test_synthetic_histories_are_distinct_and_shaped():
    import numpy as np

    bench = load_bench("subr_throughput")
    offsets, flat, targets = bench.make_samples(2000, 3706, np.random.default_rng(0))
    lengths = np.diff(offsets)
    assert targets.shape == (2000,) and lengths.min() >= 1 and lengths.max() <= 2000
    assert 100 < lengths.mean() < 220
    for s in range(0, 2000, 97):
        h = flat[offsets[s]:offsets[s + 1]]
        assert np.unique(h).size == h.size
