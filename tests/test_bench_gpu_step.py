"""jobs/bench/gpu_step.py runs end to end on a tiny CPU config, appends its section to a file
under tmp_path, and reports the model FLOPs that distrec.train.flops gives for its settings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaConfig

from distrec.train.flops import train_step_flops

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "jobs" / "bench" / "gpu_step.py"
COMMON = ["--shape", "tiny", "--device", "cpu", "--dtype", "fp32", "--steps", "2", "--warmup", "1",
          "--seq", "64", "--batch", "2"]
# the "tiny" preset, written out here independently of the script
TINY = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=128, vocab_size=256)
QV = ["q_proj", "v_proj"]


def _run(extra: list[str], out: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(BENCH), *COMMON, *extra, "--append", str(out)],
                          check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]


def _table(text: str) -> list[dict[str, str]]:
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert set(lines[1].replace("|", "").strip()) == {"-"}
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _check_rows(rows: list[dict[str, str]], objectives: list[str]) -> None:
    assert [r["objective"] for r in rows] == objectives
    for r in rows:
        assert float(r["tokens/s"].replace(",", "")) > 0
        assert "MFU (vendor bf16)" in r and r["MFU (vendor bf16)"] == "n/a"  # CPU: no vendor peak
        assert re.fullmatch(r"\d+(\.\d+)?%", r["MFU (measured matmul)"])


@pytest.mark.timeout(180)
def test_cflora_cft_with_sft_comparison(tmp_path):
    out = tmp_path / "RESULTS.md"
    res = _run(["--adapter", "cflora", "--objective", "cft", "--compare-sft"], out)
    assert [r["objective"] for r in res] == ["sft", "cft"]
    text = out.read_text()
    assert text.count("## Single-device step") == 1 and "Command: `python " in text and "--compare-sft" in text
    _check_rows(_table(text), ["sft", "cft"])
    # seq 64, history = first 32 tokens -> counterfactual rows of 32; the targets are every
    # counterfactual token but the first (31 per row), logits kept at 32 positions per row
    common = {"logit_positions": 2 * 32, "activation_checkpointing": True, "cflora": True, "cflora_d_instance": 256}
    sft = train_step_flops(TINY, 2 * 64, 64, 8, QV, **common)
    cft = train_step_flops(TINY, 2 * 64, 64, 8, QV, cft=True, cft_tokens=2 * 32, cft_seq_len=32,
                           cft_logit_positions=2 * 32, **common)
    assert res[0]["model_flops"] == sft.model_flops
    assert res[1]["model_flops"] == cft.model_flops
    # packed layout (the default): no counterfactual padding is computed
    assert res[1]["hardware_flops"] == cft.hardware_flops
    assert res[1]["tokens_per_s"] > 0 and res[1]["vs_sft_step_time"] > 0
    assert res[1]["vs_sft_model_flops"] == pytest.approx(cft.model_flops / sft.model_flops)
    for r in res:
        assert r["mfu_measured"] == pytest.approx(r["model_flops"] / r["step_time_median_s"] / r["measured_peak_flops"])


@pytest.mark.timeout(180)
def test_lora_sft(tmp_path):
    out = tmp_path / "RESULTS.md"
    (res,) = _run(["--adapter", "lora", "--objective", "sft"], out)
    _check_rows(_table(out.read_text()), ["sft"])
    # every token but the first is a target: logits at all 64 positions of both rows
    expected = train_step_flops(TINY, 2 * 64, 64, 8, QV, logit_positions=2 * 64, activation_checkpointing=True)
    assert res["model_flops"] == expected.model_flops
    assert res["hardware_flops"] == expected.hardware_flops
    assert res["trainable_params"] == 2 * 8 * ((64 + 64) + (64 + 64))  # r·(d_in + d_out), q and v, 2 layers
