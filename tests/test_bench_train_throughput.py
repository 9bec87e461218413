"""The training-throughput benchmark runs on the tiny model: distrec's real job (Ray Train +
DeepSpeed ZeRO-3, 2 workers) and the HF Trainer + PEFT baseline under torchrun, and writes its
block to a file under tmp_path (never the repository's RESULTS.md)."""

from __future__ import annotations

import pytest
from bench_scripts import load_bench


def test_summarise_is_total_work_over_total_time():
    bench = load_bench("train_throughput")
    s = bench.summarise([9.0, 1.0, 3.0], [999.0, 100.0, 500.0], [1.0, 8.0, 8.0], world=2, warmup=1)
    assert s["steps"] == 2
    assert s["tokens_per_s"] == pytest.approx(600 / 4)  # not the mean of 100/1 and 500/3
    assert s["tokens_per_s_per_rank"] == pytest.approx(75.0)
    assert s["samples_per_s"] == pytest.approx(4.0)
    assert s["step_s"] == pytest.approx(2.0)


@pytest.mark.ray
def test_bench_tiny_lora_against_hf_trainer(ray_local, tmp_path):
    bench = load_bench("train_throughput")
    out = tmp_path / "RESULTS.md"
    res = bench.main(["--rows", "lora", "--steps", "2", "--warmup", "1", "--results", str(out), "--profile",
                      "model.name_or_path=tiny", "data.train_size=64",
                      # the frozen base partitioned, so the forward has gathers to attribute
                      "deepspeed.replicate_frozen=false"])
    ours, base = res["results"]["lora"], res["baselines"]["ctr"]
    for row in (ours, base):
        assert row["steps"] == 2 and row["tokens_per_s"] > 0 and row["peak_rss_gib"] > 0
        # 2 ranks x micro 4 x accum 2 = 16 samples a step, in both paths
        assert row["samples_per_s"] * row["step_s"] == pytest.approx(16, rel=0.35)
    assert ours["compute_s"] > 0 and ours["optimizer_s"] > 0 and ours["data_wait_s"] >= 0
    text = out.read_text()
    assert "| HF Trainer + PEFT LoRA (CTR) |" in text and "| distrec LoRA (CTR) |" in text
    assert f"{ours['tokens_per_s'] / base['tokens_per_s']:.2f}×" in text
    # the profiled step (rank 0): ZeRO-3 gathers the frozen base in the forward and the backward
    prof = ours["profile"]
    assert prof["phases"]["forward"] > 0 and prof["phases"]["backward"] > 0 and prof["phases"]["optimizer"] > 0
    gathers = prof["collectives"]["all_gather"]
    assert gathers["calls"] > 0 and gathers["by_phase"].get("forward", 0) > 0
    assert sum(prof["phases"][k] for k in ("forward", "backward", "optimizer")) <= prof["step_s"]
    assert "| distrec LoRA (CTR) | " in text.split("top self-time ops")[1]
    # the HF Trainer's step profiled with the same ranges; its measured steps exclude the profiled one
    hf = base["profile"]
    assert hf["phases"]["forward"] > 0 and hf["phases"]["backward"] > 0
    assert sum(hf["phases"][k] for k in ("forward", "backward")) <= hf["step_s"]
    assert "| HF Trainer + PEFT LoRA (CTR) | " in text.split("top self-time ops")[1]
