"""The cluster templates (cluster/) and job configs (jobs/) are valid and agree with each other.

Fast and offline: nothing here starts Ray or talks to a cloud. The pins in every cluster
file must equal pyproject.toml's, so a version bump that forgets a template fails here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from distrec.config import JobConfig, load_job_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
JOBS = ROOT / "jobs"
LAUNCHER = CLUSTER / "ray-cluster-gpu.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
GPU_JOB = JOBS / "llama7b_zero3.yaml"
CPU_JOB = JOBS / "ml100k_lora.yaml"

# The packages whose exact versions were shown to install together (pyproject.toml).
PINNED = ["torch", "deepspeed", "ray", "transformers", "peft", "pyarrow", "tensorboard"]

# A requirement with an exact pin inside a shell command or list: name[extras]==version.
PIN_RE = re.compile(r"(?<![\w.\-])([A-Za-z0-9][A-Za-z0-9_.\-]*(?:\[[A-Za-z0-9_,\- ]*\])?==[A-Za-z0-9_.+!\-]+)")
CONFIG_RE = re.compile(r"--config[ =]+(\S+\.ya?ml)")


# ----------------------------------------------------------------------------- helpers


def _pyproject_requirements() -> dict[str, Requirement]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = [Requirement(r) for r in data["project"]["dependencies"]]
    return {canonicalize_name(r.name): r for r in reqs}


def _pin(req: Requirement) -> tuple[str, frozenset[str], str]:
    return canonicalize_name(req.name), frozenset(req.extras), str(req.specifier)


def _requirements(strings: list[str]) -> dict[str, Requirement]:
    out: dict[str, Requirement] = {}
    for s in strings:
        req = Requirement(s)
        name = canonicalize_name(req.name)
        assert name not in out, f"{name} is listed twice"
        out[name] = req
    return out


def _assert_pins_match_pyproject(found: dict[str, Requirement], where: str) -> None:
    expected = _pyproject_requirements()
    for name in PINNED:
        assert name in expected, f"pyproject.toml no longer pins {name}; update PINNED"
        assert name in found, f"{where}: {name} is not pinned (pyproject has {expected[name]})"
        assert _pin(found[name]) == _pin(expected[name]), (
            f"{where}: {found[name]} drifted from pyproject.toml's {expected[name]}"
        )


def _pip_packages(runtime_env: dict) -> list[str]:
    pip = runtime_env["pip"]
    packages = pip["packages"] if isinstance(pip, dict) else pip
    assert isinstance(packages, list) and all(isinstance(p, str) for p in packages)
    return packages


def _yaml_docs(path: Path) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"
    return docs


def _launcher() -> dict:
    (doc,) = _yaml_docs(LAUNCHER)
    return doc


def _runtime_env() -> dict:
    (doc,) = _yaml_docs(RUNTIME_ENV)
    return doc


def _rayjob() -> dict:
    jobs = [d for d in _yaml_docs(RAYJOB) if d.get("kind") == "RayJob"]
    assert len(jobs) == 1, "cluster/kuberay-rayjob.yaml must hold exactly one RayJob"
    return jobs[0]


def _pod_specs(rayjob: dict) -> list[tuple[str, dict]]:
    spec = rayjob["spec"]["rayClusterSpec"]
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return pods


def _gpu_limit(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


def _cpu(quantity: str | int | float) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _job_config_files() -> list[Path]:
    """Every job config in jobs/, except benchmark sweeps under jobs/bench/."""
    files = [p for p in JOBS.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()]
    return sorted(p for p in files if p.relative_to(JOBS).parts[0] != "bench")


# ----------------------------------------------------------------------------- all files


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.y*ml")), ids=lambda p: p.name)
def test_every_cluster_yaml_parses(path: Path) -> None:
    for doc in _yaml_docs(path):
        assert isinstance(doc, dict)


def test_expected_cluster_files_exist() -> None:
    for path in (LAUNCHER, RUNTIME_ENV, RAYJOB, CLUSTER / "README.md", GPU_JOB, CPU_JOB):
        assert path.is_file(), f"{path.relative_to(ROOT)} is missing"


# ----------------------------------------------------------------------------- ray up


def test_launcher_required_keys() -> None:
    cfg = _launcher()
    assert isinstance(cfg["cluster_name"], str) and cfg["cluster_name"]
    assert isinstance(cfg["max_workers"], int) and cfg["max_workers"] >= 1
    assert cfg["provider"]["type"] == "aws"
    assert cfg["provider"]["region"]

    types = cfg["available_node_types"]
    assert isinstance(types, dict) and types
    head = cfg["head_node_type"]
    assert head in types, f"head_node_type {head!r} names no node type in available_node_types"
    assert types[head]["resources"].get("GPU", 0) == 0, "the head is meant to be a CPU node"

    gpu_types = {n: t for n, t in types.items() if n != head and t["resources"].get("GPU", 0) > 0}
    assert gpu_types, "no worker node type offers GPU resources"
    for name, t in types.items():
        assert "InstanceType" in t["node_config"], name
        assert t["resources"].get("CPU", 0) > 0, f"{name}: no CPU resources"
        if name != head:
            assert 0 <= t.get("min_workers", 0) <= t["max_workers"], name
    for name, t in gpu_types.items():
        assert t["resources"]["GPU"] == 8, f"{name}: the templates assume 8-GPU nodes"
    assert sum(t.get("min_workers", 0) for n, t in types.items() if n != head) <= cfg["max_workers"]

    heads = " ".join(cfg["head_start_ray_commands"])
    workers = " ".join(cfg["worker_start_ray_commands"])
    assert "ray start --head" in heads
    assert "ray start --address=$RAY_HEAD_IP:6379" in workers


def test_launcher_matches_ray_schema() -> None:
    """Validate against the schema `ray up` itself uses (shipped inside the ray wheel)."""
    jsonschema = pytest.importorskip("jsonschema")
    spec = importlib.util.find_spec("ray")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ray is not installed")
    schema_path = Path(next(iter(spec.submodule_search_locations))) / "autoscaler" / "ray-schema.json"
    if not schema_path.is_file():
        pytest.skip("this ray wheel ships no autoscaler schema")
    jsonschema.validate(_launcher(), json.loads(schema_path.read_text()))


def test_launcher_installs_the_pyproject_pins() -> None:
    cfg = _launcher()
    setup = cfg["setup_commands"]
    text = "\n".join(setup)
    found = _requirements([m.group(1) for m in PIN_RE.finditer(text)])
    _assert_pins_match_pyproject(found, "ray-cluster-gpu.yaml setup_commands")

    # torch before deepspeed, which is built against it without compiling ops.
    torch_at = next(i for i, c in enumerate(setup) if "torch==" in c)
    ds_cmd = next(c for c in setup if "deepspeed==" in c)
    assert torch_at < setup.index(ds_cmd)
    assert "DS_BUILD_OPS=0" in ds_cmd and "--no-build-isolation" in ds_cmd
    # distrec itself, so that `distrec` is on PATH for `ray job submit ... -- distrec train`.
    assert any("~/distrec" in c and "install" in c for c in setup)
    assert "~/distrec" in cfg["file_mounts"]

    # The GPU build of faiss on GPU workers only; the CPU build on the head.
    assert any("faiss-gpu" in c for c in cfg["worker_setup_commands"])
    assert not any("faiss-gpu" in c for c in setup + cfg.get("head_setup_commands", []))


def test_launcher_docker_images_match_ray_pin() -> None:
    cfg = _launcher()
    ray_version = str(_pyproject_requirements()["ray"].specifier).removeprefix("==")
    docker = cfg["docker"]
    for key in ("image", "head_image", "worker_image"):
        if key in docker:
            assert docker[key].startswith(f"rayproject/ray:{ray_version}-"), f"docker.{key}={docker[key]}"


def _launcher_mounts() -> list[str]:
    """Container paths of the launcher's `docker run -v host:container` options."""
    opts = _launcher()["docker"]["run_options"]
    return [opt.split()[1].split(":")[1].rstrip("/") for opt in opts if opt.startswith("-v ")]


def _under(path: str, roots: list[str]) -> bool:
    return any(path.startswith(root + "/") for root in roots)


def test_launcher_mounts_the_gpu_job_storage() -> None:
    """The GPU job checkpoints to a path that every container sees (shared storage)."""
    storage = load_job_config(GPU_JOB).ray.storage_path
    assert _under(storage, _launcher_mounts()), (storage, _launcher_mounts())


# ----------------------------------------------------------------------------- runtime env


def test_runtime_env_pins_match_pyproject() -> None:
    env = _runtime_env()
    found = _requirements(_pip_packages(env))
    _assert_pins_match_pyproject(found, "runtime_env.yaml")
    # Every runtime dependency of distrec is there (workers don't install distrec itself).
    missing = sorted(set(_pyproject_requirements()) - set(found))
    assert not missing, f"runtime_env.yaml lacks pyproject dependencies: {missing}"
    assert not any(n.startswith("faiss") for n in found), "faiss comes from the node image (one build per node)"


def test_runtime_env_settings() -> None:
    env = _runtime_env()
    assert set(env) <= {"pip", "env_vars", "excludes", "working_dir", "py_modules", "config"}
    env_vars = env["env_vars"]
    # Ray rejects non-string env var values (YAML would read `false` as a bool).
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env_vars.items()), env_vars
    assert env_vars["TOKENIZERS_PARALLELISM"] == "false"
    assert env_vars["NCCL_DEBUG"]
    for key in ("DISTREC_HOME", "HF_HOME"):
        if key in env_vars:
            assert _under(env_vars[key], _launcher_mounts()), f"{key} should be on shared storage"
    excludes = env["excludes"]
    for path in ("runs/", ".venv/", ".git/"):
        assert path in excludes, f"{path} would be uploaded with --working-dir"


def test_runtime_env_is_accepted_by_ray() -> None:
    pytest.importorskip("ray")
    from ray.runtime_env import RuntimeEnv  # imports Ray; starts nothing

    RuntimeEnv(**_runtime_env())
    RuntimeEnv(**yaml.safe_load(_rayjob()["spec"]["runtimeEnvYAML"]))


# ----------------------------------------------------------------------------- KubeRay


def test_rayjob_required_keys() -> None:
    job = _rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert "distrec train --config" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0

    ray_version = str(_pyproject_requirements()["ray"].specifier).removeprefix("==")
    assert spec["rayClusterSpec"]["rayVersion"] == ray_version

    pods = _pod_specs(job)
    assert pods[0][0] == "head" and len(pods) >= 2, "a head group and at least one worker group"
    for name, pod in pods:
        assert pod["containers"], f"{name}: no containers"
        for c in pod["containers"]:
            assert c["image"].startswith(f"rayproject/ray:{ray_version}"), f"{name}: {c['image']}"
            assert c["resources"]["limits"], f"{name}: no resource limits"
    for group in spec["rayClusterSpec"]["workerGroupSpecs"]:
        gpus = [_gpu_limit(c) for c in group["template"]["spec"]["containers"]]
        assert max(gpus) > 0, f"worker group {group['groupName']} has no nvidia.com/gpu limit"
        assert group.get("minReplicas", 0) <= group["replicas"] <= group.get("maxReplicas", group["replicas"])


def test_rayjob_runtime_env_matches_pyproject_and_runtime_env_yaml() -> None:
    job_env = yaml.safe_load(_rayjob()["spec"]["runtimeEnvYAML"])
    assert isinstance(job_env, dict)
    found = _requirements(_pip_packages(job_env))
    _assert_pins_match_pyproject(found, "kuberay-rayjob.yaml runtimeEnvYAML")
    # The same environment as `ray job submit --runtime-env cluster/runtime_env.yaml`.
    local = _runtime_env()
    assert _pip_packages(job_env) == _pip_packages(local)
    assert job_env["env_vars"] == local["env_vars"]
    # Inside Kubernetes there is nothing local to upload: the code comes from a URI.
    assert re.match(r"^(https|s3|gs)://", job_env["working_dir"]), job_env["working_dir"]


def test_rayjob_mounts_shared_storage_in_every_pod() -> None:
    storage = load_job_config(GPU_JOB).ray.storage_path
    docs = _yaml_docs(RAYJOB)
    claims = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "PersistentVolumeClaim"}
    for name, pod in _pod_specs(_rayjob()):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        shared = []
        for c in pod["containers"]:
            for m in c.get("volumeMounts", []):
                if storage.startswith(m["mountPath"].rstrip("/") + "/"):
                    shared.append(volumes[m["name"]])
        assert shared, f"{name}: nothing mounted above ray.storage_path={storage}"
        claim = shared[0].get("persistentVolumeClaim", {}).get("claimName")
        assert claim, f"{name}: the run storage must be a PersistentVolumeClaim"
        if claim in claims:
            assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"], "all pods write checkpoints"


def test_rayjob_worker_pods_fit_the_gpu_job() -> None:
    cfg = load_job_config(GPU_JOB).ray
    spec = _rayjob()["spec"]["rayClusterSpec"]
    for group in spec["workerGroupSpecs"]:
        (c,) = [c for c in group["template"]["spec"]["containers"] if _gpu_limit(c)]
        gpus, cpus = _gpu_limit(c), _cpu(c["resources"]["limits"]["cpu"])
        assert cfg.num_workers % gpus == 0, "num_workers should fill whole GPU nodes"
        assert gpus * cfg.cpus_per_worker + cfg.data_actors * cfg.data_actor_cpus <= cpus
        assert cfg.num_workers // gpus <= group.get("maxReplicas", group["replicas"])


# ----------------------------------------------------------------------------- job configs


def _referenced_configs() -> list[str]:
    refs = []
    for path in sorted(CLUSTER.iterdir()):
        if path.suffix in (".yaml", ".yml", ".md"):
            refs += CONFIG_RE.findall(path.read_text())
    refs += CONFIG_RE.findall(_rayjob()["spec"]["entrypoint"])
    return sorted(set(refs))


def test_cluster_files_reference_job_configs() -> None:
    assert "jobs/llama7b_zero3.yaml" in CONFIG_RE.findall(_rayjob()["spec"]["entrypoint"])
    assert _referenced_configs()


@pytest.mark.parametrize("ref", _referenced_configs())
def test_referenced_job_config_exists_and_loads(ref: str) -> None:
    path = ROOT / ref
    assert path.is_file(), f"{ref} is referenced in cluster/ but missing from the repo"
    assert isinstance(load_job_config(path), JobConfig)


@pytest.mark.parametrize("path", _job_config_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_job_config_loads(path: Path) -> None:
    if path.name.startswith("eimf_"):  # read by distrec eimf ... (model.kind: eimf)
        from distrec.interests.pipeline import load_eimf_job

        assert load_eimf_job(path).model.kind == "eimf"
        return
    assert isinstance(load_job_config(path), JobConfig)


def test_gpu_job_config() -> None:
    cfg = load_job_config(GPU_JOB)
    assert cfg.ray.use_gpu and cfg.ray.num_workers == 8
    assert cfg.ray.storage_path.startswith("/mnt/shared/")
    assert cfg.ray.max_failures >= 1 and cfg.train.checkpoint_every
    assert cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.precision == "bf16" and cfg.model.dtype == "bf16"
    assert cfg.model.gradient_checkpointing
    assert cfg.adapter.kind == "lora" and (cfg.adapter.r, cfg.adapter.alpha) == (8, 16)
    assert cfg.adapter.target_modules == ["q_proj", "v_proj"]
    assert (cfg.data.dataset, cfg.data.task) == ("ml-1m", "ctr")
    assert cfg.data.raw_path and cfg.data.raw_path.startswith("/mnt/shared/")
    assert cfg.prompt.max_length == 2048
    # Fits the launcher's GPU nodes: whole nodes, enough CPUs for workers and data actors.
    launcher = _launcher()
    for name, t in launcher["available_node_types"].items():
        res = t["resources"]
        if res.get("GPU", 0):
            assert cfg.ray.num_workers % res["GPU"] == 0, name
            assert res["GPU"] * cfg.ray.cpus_per_worker + cfg.ray.data_actors * cfg.ray.data_actor_cpus <= res["CPU"], name


def test_cpu_job_config() -> None:
    cfg = load_job_config(CPU_JOB)
    assert not cfg.ray.use_gpu and cfg.ray.num_workers == 2
    assert cfg.model.name_or_path == "smollm2-135m"
    assert cfg.deepspeed.zero_stage == 3 and cfg.deepspeed.precision == "fp32" and cfg.model.dtype == "fp32"
    assert (cfg.data.dataset, cfg.data.task) == ("ml-100k", "ctr")
    assert (cfg.data.train_size, cfg.data.valid_size, cfg.data.test_size) == (1024, 128, 500)
    assert cfg.ray.storage_path == "runs"
    # The sizing in the file's comment: 1024 / (2 x 4 x 2) = 64 optimiser steps.
    global_batch = cfg.ray.num_workers * cfg.train.micro_batch_size * cfg.train.grad_accum
    assert cfg.data.train_size // global_batch == 64
    assert "1,024 training samples" in CPU_JOB.read_text() and "= 64 steps" in CPU_JOB.read_text()
