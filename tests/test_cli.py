"""The `distrec` console script as a user runs it: fetch + prepare print the counts they write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures_data import ml100k_raw_dir

DISTREC = str(Path(sys.executable).with_name("distrec"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([DISTREC, *args], capture_output=True, text=True, timeout=300, env=os.environ.copy())


@pytest.mark.parametrize("task, samples", [("ctr", 95_285), ("generative", 99_057)])
def test_fetch_and_prepare_print_what_they_write(tmp_path, task, samples):
    ml100k_raw_dir()  # the same persistent $DISTREC_HOME the CLI uses
    fetched = run("data", "fetch", "ml-100k")
    assert fetched.returncode == 0, fetched.stderr
    out = tmp_path / task
    done = run("data", "prepare", "ml-100k", "--task", task, "--out", str(out))
    assert done.returncode == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(s["rows"] for s in manifest["splits"].values()) == samples  # also checked against pandas in test_prepare_ml100k
    for split, info in manifest["splits"].items():
        assert f"{split:5s}: {info['rows']} samples" in done.stdout
    assert "users: 943" in done.stdout and "items: 1682" in done.stdout and "interactions: 100000" in done.stdout


def test_help_on_every_command():
    for args in ([], ["data"], ["data", "fetch"], ["data", "prepare"], ["train"], ["eval"]):
        shown = run(*args, "--help")
        assert shown.returncode == 0 and "Usage" in shown.stdout, args


def test_config_typo_is_a_clear_error_and_exit_code_2(tmp_path):
    done = run("data", "prepare", "ml-100k", "--out", str(tmp_path / "x"), "data.min_histroy=3")
    assert done.returncode == 2
    assert "unknown key 'data.min_histroy'; did you mean 'data.min_history'?" in done.stderr
    assert not (tmp_path / "x").exists()
