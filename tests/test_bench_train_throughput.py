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


def test_rounds_pool_into_total_work_over_total_time_and_ratios_are_given_per_round():
    bench = load_bench("train_throughput")
    one = {**bench.summarise([9.0, 2.0], [9.0, 200.0], [1.0, 4.0], world=2, warmup=1),
           "compute_s": 1.0, "peak_rss_gib": 3.0, "padding": 0.1, "forward_tokens": 200.0}
    two = {**bench.summarise([9.0, 4.0, 6.0], [9.0, 200.0, 400.0], [1.0, 4.0, 4.0], world=2, warmup=1),
           "compute_s": 3.0, "peak_rss_gib": 5.0, "padding": 0.3, "forward_tokens": 600.0}
    p = bench.pooled([one, two])
    assert p["steps"] == 3 and p["step_s"] == 4.0  # median of 2, 4, 6
    assert p["tokens_per_s"] == pytest.approx(800 / 12) and p["samples_per_s"] == pytest.approx(1.0)
    assert (p["compute_s"], p["peak_rss_gib"], p["padding"], p["forward_tokens"]) == (2.0, 5.0, pytest.approx(0.2), 800.0)
    assert bench.pooled([one]) is one
    # round 1: 100 vs 50 tokens/s; round 2: 100 vs 80; SFT steps 2 and 4 s against CFT 3 and 5 s
    rounds = [({"lora": {"tokens_per_s": 100.0, "step_s": 1.0}, "sft": {"step_s": 2.0}, "cft": {"step_s": 3.0}},
               {"ctr": {"tokens_per_s": 50.0}}),
              ({"lora": {"tokens_per_s": 100.0, "step_s": 1.0}, "sft": {"step_s": 4.0}, "cft": {"step_s": 5.0}},
               {"ctr": {"tokens_per_s": 80.0}})]
    text = bench.per_round(rounds)
    assert "distrec LoRA (CTR) over HF Trainer + PEFT LoRA (CTR), tokens/s: 2.00×, 1.25×" in text
    assert "distrec CFT, counterfactual prompt once (generative) step over distrec LoRA SFT (generative) step: 1.50×, 1.25×" in text


def test_even_rounds_run_the_distrec_rows_in_reverse_and_hf_last(monkeypatch, capsys):
    """A drift of the machine's speed within a run favours no row: the order of every row flips
    between rounds (the rows themselves are replaced by recorders here; the Ray test below runs them)."""
    bench = load_bench("train_throughput")
    calls = []
    row = {**bench.summarise([1.0, 2.0], [10.0, 20.0], [1.0, 1.0], world=2, warmup=1), "data_wait_s": 0.0,
           "compute_s": 1.0, "optimizer_s": 0.1, "peak_rss_gib": 1.0, "padding": 0.0, "forward_tokens": 20.0}
    monkeypatch.setattr(bench, "distrec_row", lambda name, *a, **k: calls.append(name) or dict(row))
    monkeypatch.setattr(bench, "hf_baselines", lambda names, *a: calls.append("hf") or {"ctr": dict(row)})
    bench.main(["--rows", "lora,cflora,rellax", "--rounds", "2", "--no-append"])
    assert calls == ["hf", "lora", "cflora", "rellax", "rellax", "cflora", "lora", "hf"]
    assert "distrec ReLLaX: SPA + CFLoRA from DIN (CTR) step over distrec CFLoRA, static G (CTR) step: 1.00×, 1.00×" \
        in capsys.readouterr().out


def test_zero2_rows_and_their_hf_row_run_at_zero2_in_the_same_run(monkeypatch, capsys):
    """The ``-zero2`` rows get ``deepspeed.zero_stage=2`` and an HF row of their own at ZeRO-2; the
    ZeRO-3 rows and their HF row keep the config's stage; the group's stage comes after the user's overrides."""
    bench = load_bench("train_throughput")
    seen = {}
    row = {**bench.summarise([1.0, 2.0], [10.0, 20.0], [1.0, 1.0], world=2, warmup=1), "data_wait_s": 0.0,
           "compute_s": 1.0, "optimizer_s": 0.1, "peak_rss_gib": 1.0, "padding": 0.0, "forward_tokens": 20.0}
    monkeypatch.setattr(bench, "distrec_row", lambda name, config, overrides, *a, **k:
                        seen.__setitem__(name, overrides) or dict(row))
    monkeypatch.setattr(bench, "hf_row", lambda config, overrides, *a, group="", **k:
                        seen.__setitem__(f"hf {group}", overrides) or dict(row))
    bench.main(["--rows", "lora,lora-zero2", "--no-append", "model.name_or_path=tiny"])
    tiny, zero2 = "model.name_or_path=tiny", "deepspeed.zero_stage=2"
    assert seen == {"hf ctr": [tiny], "hf ctr-zero2": [tiny, zero2], "lora": [tiny], "lora-zero2": [tiny, zero2]}
    out = capsys.readouterr().out
    assert "ZeRO-3 (the rows labelled ZeRO-2, and their HF row, at ZeRO-2)" in out
    assert "| HF Trainer + PEFT LoRA (CTR, ZeRO-2) |" in out
    assert "distrec LoRA (CTR) step / distrec LoRA, ZeRO-2 (CTR) step (medians, same samples): 1.00×" in out


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
