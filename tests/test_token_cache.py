"""Token shards: built once by the Ray Data actors, reused by later runs, equal to a fresh tokenisation.

Truth: ``TokenizeActor.tokenize`` run in this process on the prepared split itself (no Ray, no
cache), and the file system (a hit writes nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from distrec.cli import app
from distrec.config import load_job_config
from distrec.config_loader import to_dict
from distrec.data import storage
from distrec.train.artefacts import ensure_prepared
from distrec.train.data_stream import TokenizeActor
from distrec.train.row_source import ShardRows
from distrec.train.token_cache import MANIFEST, ensure_tokens, split_files

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_thread")]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty token cache (the prepared data and models stay in the suite's home)."""
    monkeypatch.setenv("DISTREC_HOME", str(tmp_path / "home"))
    import os

    for sub in ("raw", "models", "prepared"):  # reuse the suite's fetched data, models and prepared folders
        (tmp_path / "home").mkdir(exist_ok=True)
        source = Path(os.environ.get("DISTREC_TEST_HOME", "")) / sub
        if source.exists():
            (tmp_path / "home" / sub).symlink_to(source)
    return tmp_path / "home"


@pytest.mark.parametrize("config", ["tiny.yaml", "tiny_cft.yaml"])
def test_cached_tokens_equal_a_fresh_tokenisation_and_a_second_run_reuses_them(ray_local, home, config, capsys):
    job = load_job_config(REPO / "jobs" / config)
    prepared = ensure_prepared(job)
    folder, hit = ensure_tokens(job, prepared)
    assert not hit and "token cache: miss" in capsys.readouterr().out
    stamp = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    again, hit = ensure_tokens(job, prepared)
    assert (again, hit) == (folder, True) and "token cache: hit" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == stamp  # nothing rewritten

    fresh = TokenizeActor(to_dict(job), str(prepared))
    files = split_files(job, prepared, ["train", "test"])
    for split in ("train", "test"):
        want = fresh.tokenize(storage.open_split(prepared, split))
        rows = ShardRows(files[split], cached_groups=2)
        order = np.random.default_rng(0).permutation(rows.num_rows)  # random access, as the workers read
        got = {k: np.empty(rows.num_rows, dtype=object) for k in want}
        for lo in range(0, rows.num_rows, 7):
            part = rows.take(order[lo:lo + 7])
            for k in want:
                got[k][order[lo:lo + 7]] = list(part[k])
        assert rows.num_rows == len(want["sample_id"]) > 0
        for k in want:
            for a, b in zip(got[k], want[k]):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{split}.{k}")
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["splits"]["train"]["rows"] == storage.read_manifest(prepared)["splits"]["train"]["rows"]


def test_the_key_follows_what_changes_the_tokens(ray_local, home):
    base = load_job_config(REPO / "jobs" / "tiny.yaml")
    prepared = ensure_prepared(base)
    folder, _ = ensure_tokens(base, prepared)
    assert ensure_tokens(load_job_config(REPO / "jobs" / "tiny.yaml", ["train.lr=1e-3"]), prepared) == (folder, True)
    other, hit = ensure_tokens(load_job_config(REPO / "jobs" / "tiny.yaml", ["prompt.history_k=4"]), prepared)
    assert other != folder and not hit
    (other / MANIFEST).unlink()  # an interrupted or damaged cache folder is rebuilt, not trusted
    rebuilt, hit = ensure_tokens(load_job_config(REPO / "jobs" / "tiny.yaml", ["prompt.history_k=4"]), prepared)
    assert rebuilt == other and not hit and (other / MANIFEST).is_file()


def test_cli_tokenize_builds_then_reports_the_cache(ray_local, home):
    runner = CliRunner()
    first = runner.invoke(app, ["data", "tokenize", "--config", str(REPO / "jobs" / "tiny.yaml")])
    assert first.exit_code == 0, first.output
    assert "tokens (built" in first.output and "train: 64 rows" in first.output
    second = runner.invoke(app, ["data", "tokenize", "--config", str(REPO / "jobs" / "tiny.yaml")])
    assert second.exit_code == 0 and "tokens (cached" in second.output and "token cache: hit" in second.output


def test_shard_rows_reads_any_rows_across_files_and_record_batches(tmp_path):
    """Rows asked in any order, across files and record batches (equal or not), equal the written rows."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 9, size=2500)
    ids = [rng.integers(0, 50_000, size=k).astype(np.int32) for k in lengths]
    table = pa.table({"sample_id": np.arange(2500, dtype=np.int64) * 10, "label": (np.arange(2500) % 2).astype(np.int8),
                      "input_ids": pa.array([a.tolist() for a in ids], pa.list_(pa.int32()))})
    files = []
    for i, (lo, hi) in enumerate([(0, 1000), (1000, 1001), (1001, 2500)]):
        files.append(tmp_path / f"part-{i}.arrow")
        with pa.OSFile(str(files[-1]), "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            if i == 2:  # unequal batches: the reader must not guess them from the first one and the total
                for a, b in [(1001, 1401), (1401, 2001), (2001, 2100), (2100, 2500)]:  # 400, 600, 99, 400
                    writer.write_table(table.slice(a, b - a))
            else:
                writer.write_table(table.slice(lo, hi - lo), max_chunksize=256)
    rows = ShardRows(files, cached_groups=2)
    assert len(rows) == 2500 and "input_ids" in rows
    idx = np.array([2499, 0, 1000, 999, 1001, 5, 5, 1750, 2050, 2099, 2100, 1400, 1401])
    got = rows.take(idx)
    assert got["sample_id"].tolist() == (idx * 10).tolist() and got["label"].dtype == np.int8
    for i, k in enumerate(idx):
        np.testing.assert_array_equal(got["input_ids"][i], ids[k])
    assert rows.head(10).take([9])["sample_id"].tolist() == [90]
    with pytest.raises(IndexError):
        rows.head(10).take([10])
    # a whole scalar column, batch by batch, also cut at a head
    assert rows.column("sample_id").tolist() == list(range(0, 25000, 10))
    assert rows.head(1401).column("label").tolist() == [i % 2 for i in range(1401)]
    assert rows.column("label").dtype == np.int8


def test_write_split_cuts_batches_of_any_size_into_exact_record_batches(tmp_path, monkeypatch):
    """Input batches of uneven sizes become files of ROWS_PER_FILE rows in BATCH_ROWS-row record
    batches (the last of each file shorter), and ShardRows reads every row back in order."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from distrec.train import token_cache

    monkeypatch.setattr(token_cache, "ROWS_PER_FILE", 1000)
    sizes, lo, batches = [300, 77, 500, 1, 1222], 0, []
    for k in sizes:
        ids = np.empty(k, dtype=object)
        ids[:] = [np.arange(i % 5 + 1, dtype=np.int64) for i in range(lo, lo + k)]
        batches.append({"sample_id": np.arange(lo, lo + k, dtype=np.int64), "input_ids": ids})
        lo += k
    entry = token_cache.write_split(iter(batches), tmp_path / "train")
    assert entry == {"rows": 2100, "files": ["part-00000.arrow", "part-00001.arrow", "part-00002.arrow"]}
    layouts = []
    for name in entry["files"]:
        handle = ipc.open_file(pa.OSFile(str(tmp_path / "train" / name)))
        layouts.append([handle.get_batch(j).num_rows for j in range(handle.num_record_batches)])
    assert layouts == [[128] * 7 + [104], [128] * 7 + [104], [100]]
    rows = ShardRows([tmp_path / "train" / f for f in entry["files"]])
    got = rows.take(np.arange(2100))
    assert got["sample_id"].tolist() == list(range(2100))
    assert [len(v) for v in got["input_ids"]] == [i % 5 + 1 for i in range(2100)]
