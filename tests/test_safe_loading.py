"""Safe loading (issue 8): no pickle-executing loads, no remote code unless asked, loopback-only servers.

The source checks walk distrec's syntax trees, so a new ``torch.load`` without
``weights_only=True`` or a hard-coded ``trust_remote_code=True`` anywhere fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from distrec.config import ModelConfig

PACKAGE = Path(__file__).resolve().parents[1] / "distrec"


def calls(attr: str):
    for file in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
                yield file, node


def keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def test_every_torch_load_is_weights_only():
    loads = [(f, n) for f, n in calls("load") if isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"]
    assert loads, "expected torch.load calls (RNG state in checkpoints)"
    for file, node in loads:
        value = keyword(node, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{file}:{node.lineno}: torch.load without weights_only=True"


def test_remote_code_only_when_the_config_says_so():
    assert ModelConfig().trust_remote_code is False
    for file, node in calls("from_pretrained"):
        value = keyword(node, "trust_remote_code")
        assert not (isinstance(value, ast.Constant) and value.value is True), f"{file}:{node.lineno}: trust_remote_code=True"


def test_model_weights_are_written_as_safetensors():
    savers = {f"{f.relative_to(PACKAGE)}:{n.lineno}" for f, n in calls("save") if isinstance(n.func.value, ast.Name)
              and n.func.value.id == "torch"}
    # torch.save only for optimiser/RNG state (plain tensors, read back weights_only); weights go through safetensors
    assert savers and all(s.startswith("train/checkpoint.py") for s in savers), savers


@pytest.mark.ray
def test_local_ray_binds_loopback_only(ray_local):
    import ray

    ctx = ray.get_runtime_context()
    assert ctx.gcs_address.startswith("127.0.0.1:")
    node = ray._private.worker.global_worker.node  # the head this driver started
    assert node.address_info["webui_url"].startswith("127.0.0.1:")
    assert node.node_ip_address == "127.0.0.1"
