"""Markdown figures for ``$OUT/gpu_oneshot.md`` (``jobs/gpu/oneshot.sh`` calls this on the GPU machine).

    python3 jobs/gpu/report.py env                 # versions: python, torch/CUDA, GPU, packages
    python3 jobs/gpu/report.py run RUN_DIR NAME    # one `distrec train` stage's figures

``run`` reads the run's TensorBoard scalars (``distrec.eval.tensorboard``) and its
``diagnostics/memory_rank*.json``: per-step time, tokens/s, model TFLOP/s and MFU (median over
the steps after the first ``WARMUP``), peak GPU memory (``torch.cuda.max_memory_allocated``),
the first and last training loss and every ``time/``, ``eval``/``test`` scalar's last value.
It prints a markdown section with a ```json block of the same figures; never fails the caller
(an unreadable run prints what it could).
"""

from __future__ import annotations

import importlib
import json
import platform
import statistics
import sys
from pathlib import Path

WARMUP = 3  # steps left out of the medians (allocator warm-up, first collectives)
PACKAGES = ("torch", "transformers", "peft", "deepspeed", "ray", "faiss", "numpy", "pydantic", "pyarrow",
            "pandas", "tokenizers", "huggingface_hub", "tensorboard", "aiohttp", "grpc")


def env() -> str:
    lines = [f"- python {platform.python_version()} ({sys.executable}), {platform.machine()}"]
    for name in PACKAGES:
        try:
            mod = importlib.import_module(name)
            where = Path(getattr(mod, "__file__", "") or "?").parent.parent
            lines.append(f"- {name} {getattr(mod, '__version__', '?')} ({where})")
        except Exception as exc:  # noqa: BLE001 - report, never fail
            lines.append(f"- {name}: import failed: {type(exc).__name__}: {str(exc)[:200]}")
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            nccl = torch.cuda.nccl.version()
            nccl = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
            lines.append(f"- GPU: {torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.1f} GiB, "
                         f"sm_{p.major}{p.minor}, {p.multi_processor_count} SMs; torch CUDA {torch.version.cuda}, "
                         f"NCCL {nccl}, bf16 {torch.cuda.is_bf16_supported()}")
        else:
            lines.append("- GPU: torch sees none")
    except Exception as exc:  # noqa: BLE001
        lines.append(f"- GPU: {type(exc).__name__}: {exc}")
    return "\n".join(lines)


def figures(run_dir: Path) -> dict:
    """The stage's figures from its run folder (``<storage>/<run_name>/distrec``)."""
    out: dict = {"run_dir": str(run_dir)}
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        from distrec.eval.tensorboard import read_scalars

        scalars = read_scalars(run_dir / "tensorboard")
    except Exception as exc:  # noqa: BLE001
        out["error"] = f"reading TensorBoard scalars: {type(exc).__name__}: {exc}"
        scalars = {}
    steps = scalars.get("throughput/step_time_s", [])
    out["steps_logged"] = len(steps)

    def median_after_warmup(tag: str) -> float | None:
        values = [v for s, v in scalars.get(tag, []) if s > WARMUP] or [v for _, v in scalars.get(tag, [])]
        return round(statistics.median(values), 4) if values else None

    for tag in ("throughput/step_time_s", "throughput/tokens_per_s", "throughput/samples_per_s",
                "throughput/model_tflops_per_s", "throughput/mfu", "throughput/compute_s",
                "throughput/optimizer_s", "data/padding_fraction"):
        value = median_after_warmup(tag)
        if value is not None:
            out[f"median {tag}"] = value
    if steps:
        out["first step_time_s"] = round(steps[0][1], 3)
    for tag, points in sorted(scalars.items()):
        if tag.startswith("memory/") and points:  # logged in GiB already (<name>_gib)
            out[f"max {tag}"] = round(max(v for _, v in points), 3)
        elif tag.startswith(("time/", "valid/", "test/", "eval/")) or "eval_" in tag:
            out[f"last {tag}"] = round(points[-1][1], 4)
    loss = scalars.get("train/loss", [])
    if loss:
        out["train/loss first -> last"] = [round(loss[0][1], 4), round(loss[-1][1], 4)]
    for path in sorted((run_dir / "diagnostics").glob("memory_rank*.json")):
        try:
            peak = json.loads(path.read_text())
            out[f"{path.stem} GiB"] = {k: round(v / 2**30, 2) for k, v in peak.items()}
        except (OSError, ValueError, TypeError):
            pass
    return out


def run_section(run_dir: Path, name: str) -> str:
    figs = figures(run_dir)
    rows = [f"| {k} | {v} |" for k, v in figs.items() if k != "run_dir"]
    return "\n".join([f"#### {name}: figures", "", "| figure | value |", "| --- | --- |", *rows, "",
                      "```json", json.dumps(figs, default=str), "```", ""])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if args[:1] == ["env"]:
            print(env())
        elif args[:1] == ["run"] and len(args) == 3:
            print(run_section(Path(args[1]), args[2]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Exception as exc:  # noqa: BLE001 - the caller goes on to the next stage
        print(f"(report.py {' '.join(args)}: {type(exc).__name__}: {exc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
