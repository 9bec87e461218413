"""The GPU one-shot (jobs/gpu/): what can be checked without a GPU.

- the stages ``oneshot.sh --print-stages`` lists load through the real config loader with the
  script's own overrides, and describe the run the issue asks for (1B random-init Llama, bf16,
  ZeRO-3, one GPU; LoRA CTR; CFLoRA + CFT generative), and their DeepSpeed config builds;
- the gpu_step.py arguments the script passes parse with that script's current CLI;
- the script is valid bash, and its ``--cpu-dry-run`` (unpack + listing checks) passes on a
  small synthetic pack and fails on one that still holds ``ray/jars``;
- ``pack.py``'s size and listing checks; the real ``.gpu_pack/`` (when built here) passes them.

Building the real pack needs PyPI and minutes: that test is ``slow`` (``make gpu-pack`` runs the
same build and fails on the same size check).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distrec.config import load_job_config

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "jobs" / "gpu" / "oneshot.sh"


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pack = _load(REPO / "jobs" / "gpu" / "pack.py", "distrec_gpu_pack")


def _env(**extra) -> dict:
    """The script calls ``python3``: this interpreter's folder first on PATH."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **extra}


def _stages() -> list[tuple[str, list[str]]]:
    out = subprocess.run(["bash", str(SCRIPT), "--print-stages"], cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=30).stdout
    rows = [line.split("\t") for line in out.strip().splitlines()]
    return [(first, rest.split()) for first, rest in rows]


def test_oneshot_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=30)


def test_train_stages_load_with_the_scripts_overrides():
    stages = [(config, overrides) for config, overrides in _stages() if config != "gpu_step"]
    configs = {REPO / config for config, _ in stages}
    assert configs == set((REPO / "jobs" / "gpu").glob("*.yaml")), "pack.py prepares data for every jobs/gpu YAML"
    jobs = {}
    for config, overrides in stages:
        job = load_job_config(REPO / config, overrides)
        jobs[Path(config).stem] = job
        assert job.model.name_or_path == f"/tmp/distrec-gpu/home/models/{pack.MODEL_NAME}"
        assert (job.model.init, job.model.dtype) == ("random", "bf16")
        assert (job.deepspeed.zero_stage, job.deepspeed.precision) == (3, "bf16")
        assert (job.ray.use_gpu, job.ray.num_workers) == (True, 1)
        assert job.ray.storage_path.startswith("/tmp/distrec-gpu/") and job.ray.run_name
        assert job.train.max_steps and job.train.max_steps <= 50  # a few steps, not an epoch
        assert job.data.train_size >= job.train.max_steps * job.train.micro_batch_size * job.train.grad_accum
    ctr, cft = jobs["lora_ctr_1b"], jobs["cflora_cft_1b"]
    assert (ctr.data.task, ctr.adapter.kind) == ("ctr", "lora")
    assert (cft.data.task, cft.adapter.kind) == ("generative", "cflora") and cft.cft.lam > 0 and cft.eval.generate


def test_train_stages_build_their_deepspeed_config():
    from distrec.train.strategy import build_ds_config

    for config, overrides in _stages():
        if config == "gpu_step":
            continue
        job = load_job_config(REPO / config, overrides)
        ds = build_ds_config(job.deepspeed, job.train, job.ray.num_workers)
        assert ds["zero_optimization"]["stage"] == 3
        assert ds.get("bf16", {}).get("enabled") is True


def test_the_1b_shape_is_1b():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=49_152, **pack.LLAMA_1B))
    n = sum(p.numel() for p in model.parameters())
    assert 1.0e9 < n < 1.3e9, n


def test_gpu_step_arguments_parse():
    (args,) = [a for name, a in _stages() if name == "gpu_step"]
    assert args[args.index("--shape") + 1] == "7b"
    gpu_step = _load(REPO / "jobs" / "bench" / "gpu_step.py", "distrec_gpu_step_cli")
    cpu_args = ["cpu" if a == "cuda" else a for a in args]  # parse_args refuses cuda where there is none
    parsed = gpu_step.parse_args(cpu_args)
    assert (parsed.shape, parsed.objective, parsed.adapter) == ("7b", "cft", "cflora")


@pytest.mark.parametrize("pack_size,repo_size,ok", [
    (40 * 2**20, 2 * 2**20, True),
    (62 * 2**20 - 1, 2 * 2**20, True),
    (62 * 2**20, 2 * 2**20, False),     # together exactly 64 MiB: refused
    (63 * 2**20, 2 * 2**20, False),
])
def test_size_check(pack_size, repo_size, ok):
    assert pack.budget(repo_size) == 64 * 2**20 - repo_size
    if ok:
        pack.check_size(pack_size, repo_size)
    else:
        with pytest.raises(pack.PackError, match="64.0 MiB limit"):
            pack.check_size(pack_size, repo_size)


GOOD_SITE = ["deepspeed/__init__.py", "deepspeed-0.19.8.dist-info/WHEEL", "ray/__init__.py",
             "ray/_raylet.so", "ray/core/src/ray/raylet/raylet", "ray/core/src/ray/gcs/gcs_server",
             "ray/dashboard/client/build/index.html", "faiss/__init__.py", "faiss/_swigfaiss.abi3.so",
             "pydantic/__init__.py", "hjson/__init__.py", "jsonschema/__init__.py", "opencensus/__init__.py",
             "aiohttp_cors/__init__.py"]
GOOD_PINS = ["transformers/__init__.py", "peft/__init__.py"]
GOOD_HOME = ["raw/ml-100k/ml-100k.inter", "raw/ml-100k/ml-100k.item", "raw/ml-100k/ml-100k.user",
             "prepared/ml-100k-ctr-0123456789/manifest.json", "prepared/ml-100k-generative-0123456789/manifest.json",
             "models/llama-1b/config.json", "models/llama-1b/tokenizer.json", "models/llama-1b/tokenizer_config.json"]


def test_listing_checks():
    assert pack.check_listing("site.tar.xz", GOOD_SITE) == []
    assert pack.check_listing("home.tar.xz", GOOD_HOME) == []
    problems = pack.check_listing("site.tar.xz", [n for n in GOOD_SITE if "_raylet" not in n]
                                  + ["ray/jars/ray_dist.jar", "ray/dashboard/client/build/static/js/main.js.map"])
    text = "\n".join(problems)
    assert "ray/_raylet*.so" in text and "ray/jars" in text and "*.map" in text
    assert pack.check_listing("home.tar.xz", GOOD_HOME + ["models/llama-1b/model.safetensors"])


def _synthetic_pack(folder: Path, site_extra: tuple[str, ...] = ()) -> Path:
    for archive, names in (("site.tar.xz", GOOD_SITE + list(site_extra)), ("pins.tar.xz", GOOD_PINS),
                           ("home.tar.xz", GOOD_HOME)):
        tree = folder / "trees" / archive
        for name in names:
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_text("x")
        pack.write_archive(tree, folder / "pack" / archive)
    (folder / "pack" / "MANIFEST.json").write_text("{}")
    return folder / "pack"


def test_cpu_dry_run_on_a_synthetic_pack(tmp_path):
    good = _synthetic_pack(tmp_path / "good")
    done = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run"], cwd=REPO, capture_output=True, text=True,
                          env=_env(GPU_PACK=str(good)), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "lora_ctr_1b.yaml" in done.stdout and "gpu_step.py" in done.stdout
    bad = _synthetic_pack(tmp_path / "bad", site_extra=("ray/jars/ray_dist.jar",))
    done = subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run"], cwd=REPO, capture_output=True, text=True,
                          env=_env(GPU_PACK=str(bad)), timeout=60)
    assert done.returncode != 0 and "ray/jars" in done.stderr


@pytest.mark.skipif(not (pack.PACK / "MANIFEST.json").is_file(), reason="no .gpu_pack/ here (make gpu-pack)")
def test_the_built_pack_passes_its_checks():
    manifest = pack.verify(pack.PACK, repo=REPO)  # listings of the real archives, and the size with the repo
    assert set(manifest["archives"]) == set(pack.ARCHIVES)
    assert any(w.startswith("deepspeed-") and w.endswith("-py3-none-any.whl") for w in manifest["wheels"])


@pytest.mark.slow
def test_build_the_pack_for_real(tmp_path):
    """PyPI and several minutes (downloads, DeepSpeed's sdist, xz); ``make gpu-pack`` is the same."""
    manifest = pack.build(tmp_path / "pack", tmp_path / "work")
    assert manifest["pack_bytes"] < pack.budget(manifest["repo_bytes"])


def test_adamw_fallback_replaces_fused_adam():
    """oneshot.sh's fallback when FusedAdam cannot be built: every process that has the folder on
    PYTHONPATH gets torch AdamW under FusedAdam's name, and it steps."""
    code = ("import torch; from deepspeed.ops.adam import FusedAdam; "
            "assert issubclass(FusedAdam, torch.optim.AdamW), FusedAdam; "
            "p = torch.nn.Parameter(torch.zeros(3)); o = FusedAdam([p], lr=0.1, weight_decay=0.0); "
            "p.grad = torch.ones(3); o.step(); assert float(p.sum()) < 0; print('ok')")
    env = _env(PYTHONPATH=str(REPO / "jobs" / "gpu" / "adamw_fallback"), DS_ACCELERATOR="cpu")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_verify_cli_fails_on_an_oversized_pack(tmp_path, capsys):
    """The exit status `make gpu-pack` relies on: pack + repository >= 64 MiB is an error."""
    folder = _synthetic_pack(tmp_path)
    assert pack.main(["verify", "--pack", str(folder)]) == 0
    with (folder / "padding.bin").open("wb") as fh:
        fh.truncate(64 * 2**20)  # sparse: counts its size, takes no disk
    assert pack.main(["verify", "--pack", str(folder)]) == 1
    assert "limit" in capsys.readouterr().err
