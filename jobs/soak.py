"""The soak job: jobs/soak.yaml with its injected worker kills, then the same job uninterrupted.

    .venv/bin/python jobs/soak.py [key=value ...]

Prints wall times, restarts (kill markers and resume events), whether every training row was
consumed exactly once per epoch, and the largest adapter difference between the two runs.
"""

from __future__ import annotations

import sys
import time

import torch
from safetensors.torch import load_file


def main(argv: list[str]) -> dict:
    from distrec.config import load_job_config
    from distrec.train.faults import consumed
    from distrec.train.launcher import run_job
    from distrec.eval.tensorboard import read_texts

    stamp = time.strftime("%Y%m%d-%H%M%S")
    killed = run_job(load_job_config("jobs/soak.yaml", [*argv, f"ray.run_name=soak-{stamp}-killed"]))
    clean = run_job(load_job_config("jobs/soak.yaml", [*argv, "debug.kill_at_steps=[]", "debug.record_samples=false",
                                                       f"ray.run_name=soak-{stamp}-clean"]))
    a = load_file(str(killed.run_dir / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(clean.run_dir / "adapter" / "adapter_model.safetensors"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    by_epoch, raw = consumed(killed.run_dir)
    once = all(len(ids) == len(set(ids)) for ids in by_epoch.values())
    report = {
        "killed_run_s": round(killed.elapsed_s), "clean_run_s": round(clean.elapsed_s),
        "kills": sorted(p.name for p in (killed.run_dir / "faults").glob("killed_at_step_*")),
        "resumes": read_texts(killed.run_dir / "tensorboard").get("events/resume", []),
        "rows_per_epoch": {e: len(ids) for e, ids in by_epoch.items()}, "each_row_once_per_epoch": once,
        "step_records": raw, "max_abs_adapter_diff": diff, "equal_within_1e-6": diff <= 1e-6,
    }
    for k, v in report.items():
        print(f"{k}: {v}")
    assert torch.isfinite(torch.tensor(diff))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
