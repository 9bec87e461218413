"""jobs/bench/engine_overhead.py runs end to end on the tiny model over 2 gloo ranks and appends
one section whose ratios are its own step times divided by the plain PyTorch step."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_plain_every_hook_and_pruned_rows_with_their_ratios(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# earlier\n")
    cmd = [sys.executable, str(REPO / "jobs" / "bench" / "engine_overhead.py"), "--model", "tiny", "--ranks", "2",
           "--tokens", "24", "--steps", "1", "--results", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# earlier\n") and text.count("## ZeRO-3 engine overhead, outside Ray") == 1
    assert "2 gloo rank(s)" in text and "micro-batch 4 × 24 tokens" in text
    rows = dict((name, (float(s), float(r))) for name, s, r in
                re.findall(r"^\| (plain|every hook|pruned) \| ([\d.]+) \| ([\d.]+)× \|$", text, re.M))
    assert list(rows) == ["plain", "every hook", "pruned"]
    plain = rows["plain"][0]
    assert plain > 0.005 and rows["plain"][1] == 1.0
    half = 0.005  # every printed figure is rounded to 2 decimals
    for seconds, ratio in rows.values():
        assert seconds > 0
        assert (seconds - half) / (plain + half) - half <= ratio <= (seconds + half) / (plain - half) + half
