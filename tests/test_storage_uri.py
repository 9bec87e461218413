"""distrec.storage_uri against a real S3-compatible server (moto, 127.0.0.1) and local disk.

What is written through pyarrow is read back with boto3, an independent client; the order of
uploads is recorded on an fsspec in-memory filesystem, the way Ray Train accepts any fsspec one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from s3_server import get, keys, s3_bucket

from distrec.errors import ConfigError
from distrec.storage_uri import Staging, is_uri, local_copy, locate

BUCKET = "distrec-unit"


@pytest.fixture(scope="module")
def s3():
    with s3_bucket(BUCKET) as uri:
        yield uri


def test_local_paths_resolve_exactly_as_before(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = locate("runs")
    assert runs.is_local and runs.path == runs.uri == str(tmp_path.resolve() / "runs")
    assert runs.ray_storage() == {"storage_path": str(tmp_path.resolve() / "runs")}
    assert (runs / "a" / "distrec").path == str(tmp_path.resolve() / "runs" / "a" / "distrec")
    assert (runs / "a" / "distrec").parent.name == "a"
    assert locate("~/x").path == str(Path.home() / "x")
    assert locate(f"file://{tmp_path}/y").path == str(tmp_path / "y")
    assert [is_uri(s) for s in ("runs", "/abs", "C:\\runs", "file:///tmp/x", "s3://b/p", "gs://b", "memory://m")] \
        == [False, False, False, False, True, True, True]


def test_s3_uri_keeps_its_query_when_joined_and_ray_gets_the_resolved_filesystem(s3):
    import os
    from urllib.parse import urlsplit

    endpoint = urlsplit(os.environ["AWS_ENDPOINT_URL_S3"]).netloc
    uri = f"s3://{BUCKET}/prefix/?endpoint_override={endpoint}&scheme=http"
    run = locate(uri) / "job" / "distrec"
    assert run.path == f"{BUCKET}/prefix/job/distrec"
    assert run.uri == f"s3://{BUCKET}/prefix/job/distrec?endpoint_override={endpoint}&scheme=http"
    assert run.parent.uri == f"s3://{BUCKET}/prefix/job?endpoint_override={endpoint}&scheme=http"
    assert run.parent.name == "job"
    storage = locate(uri).ray_storage()
    assert storage["storage_path"] == f"{BUCKET}/prefix" and isinstance(storage["storage_filesystem"], pafs.S3FileSystem)

    (run / "config_train.yaml").write_text("ray:\n  run_name: job\n")
    assert get(BUCKET, "prefix/job/distrec/config_train.yaml") == b"ray:\n  run_name: job\n"
    assert locate(run.uri).is_file() is False and (locate(run.uri) / "config_train.yaml").is_file()


class _Recording(pafs.FSSpecHandler):
    """An fsspec filesystem behind pyarrow that records the order files are written in."""

    def __init__(self, fs, written: list[str]):
        super().__init__(fs)
        self.written = written

    def open_output_stream(self, path, metadata):
        self.written.append(path)
        return super().open_output_stream(path, metadata)


def test_staging_uploads_new_and_changed_files_once_and_the_marker_last():
    import fsspec

    from distrec.storage_uri import Location

    written: list[str] = []
    memory = fsspec.filesystem("memory")
    target = Location(pafs.PyFileSystem(_Recording(memory, written)), "/staging-test/run", "memory://staging-test/run")
    with Staging(target) as staging:
        local = staging.local
        assert staging.remote and local.is_dir() and not str(local).startswith("/staging-test")
        (local / "tensorboard").mkdir()
        (local / "tensorboard" / "events.1").write_bytes(b"a")
        (local / "adapter").mkdir()
        (local / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 1000)
        (local / "metrics_train.json").write_text("{}")
        staging.push("tensorboard")
        assert written == ["/staging-test/run/tensorboard/events.1"]
        staging.push("tensorboard")  # nothing changed: nothing sent
        assert len(written) == 1
        (local / "tensorboard" / "events.1").write_bytes(b"ab")  # grew (size and mtime change)
        staging.publish("metrics_train.json")
        assert written[1:] == ["/staging-test/run/adapter/adapter_model.safetensors",
                               "/staging-test/run/tensorboard/events.1", "/staging-test/run/metrics_train.json"]
        assert memory.cat("/staging-test/run/tensorboard/events.1") == b"ab"
        assert target.files() == ["adapter/adapter_model.safetensors", "metrics_train.json", "tensorboard/events.1"]
    assert not local.exists()  # the staging folder is removed at the end


def test_staging_a_local_run_folder_writes_in_place(tmp_path):
    target = locate(tmp_path / "run")
    with Staging(target) as staging:
        assert not staging.remote and staging.local == tmp_path / "run"
        staging.local.mkdir()
        (staging.local / "metrics_train.json").write_text("{}")
        staging.publish("metrics_train.json")
    assert (tmp_path / "run" / "metrics_train.json").read_text() == "{}"  # kept, not removed


def test_tensorboard_events_reach_the_bucket_and_read_back_equal(s3, tmp_path):
    from distrec.eval.report import publish_report
    from distrec.train.monitor import Monitor
    from distrec.eval.tensorboard import read_scalars, read_texts

    run = locate(s3) / "tb-run" / "distrec"
    with Staging(run) as staging:
        mon = Monitor(staging.local / "tensorboard", upload=lambda: staging.push("tensorboard"), upload_every_s=3600)
        mon.scalars(1, {"train/loss": 0.75})
        assert keys(BUCKET, "tb-run/") == []  # within upload_every_s: still local
        mon.sync()  # a checkpoint: flushed and uploaded
        remote = read_scalars(f"{run.uri}/tensorboard")
        assert remote == {"train/loss": [(1, 0.75)]}
        mon.text("events/resume", 1, "resumed at step 1")
        mon.scalars(2, {"train/loss": 0.5})
        mon.close()
        local = read_scalars(staging.local / "tensorboard")
    assert read_scalars(f"{run.uri}/tensorboard") == local == {"train/loss": [(1, 0.75), (2, 0.5)]}
    assert read_texts(f"{run.uri}/tensorboard") == {"events/resume": ["resumed at step 1"]}
    assert read_scalars(f"{s3}/no-such-run/tensorboard") == {}
    with Staging(locate(s3) / "tb-eager") as staging, \
            Monitor(staging.local / "tb", upload=lambda: staging.push("tb"), upload_every_s=0) as eager:
        eager.scalars(3, {"train/lr": 0.125})  # upload_every_s=0: every call uploads
        assert read_scalars(f"{s3}/tb-eager/tb") == {"train/lr": [(3, 0.125)]}

    report = publish_report(run, {"test.auc": 0.5}, {"tensorboard": f"{run.uri}/tensorboard"})
    assert report == f"{run.uri}/report.md"
    text = get(BUCKET, "tb-run/distrec/report.md").decode()
    assert f"`{run.uri}`" in text and f"tensorboard --logdir {run.uri}/tensorboard" in text
    assert "tb-run/distrec/plots/train_loss.png" in keys(BUCKET, "tb-run/distrec/plots/")
    assert get(BUCKET, "tb-run/distrec/plots/train_loss.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_local_copy_of_a_remote_file(s3):
    (locate(s3) / "copy" / "a.json").write_text(json.dumps({"x": 1}))
    with local_copy(f"{s3}/copy/a.json") as path:
        assert json.loads(path.read_text()) == {"x": 1}
    assert not path.exists()


def test_an_unknown_scheme_is_a_config_error_naming_the_uri():
    with pytest.raises(ConfigError, match="nosuch://bucket/x"):
        locate("nosuch://bucket/x")


def test_fault_injection_with_object_storage_is_refused_before_anything_runs():
    from distrec.config import load_job_config
    from distrec.train.launcher import run_job

    job = load_job_config(Path(__file__).parents[1] / "jobs" / "tiny.yaml",
                          ["ray.storage_path=memory://refused", "debug.kill_at_steps=[2]"])
    with pytest.raises(ConfigError, match=r"debug.kill_at_steps need a local ray.storage_path.*memory://refused"):
        run_job(job)


def test_eval_of_a_run_on_s3_that_has_not_finished_is_refused_naming_it(s3):
    from typer.testing import CliRunner

    from distrec.cli import app

    run = f"{s3}/unfinished/distrec"
    missing = CliRunner().invoke(app, ["eval", "--run", run])
    assert missing.exit_code == 2 and f"config file not found: {run}/config_train.yaml" in missing.output
    tiny = (Path(__file__).parents[1] / "jobs" / "tiny.yaml").read_text()
    (locate(run) / "config_train.yaml").write_text(tiny.replace("storage_path: runs", f"storage_path: {s3}"))
    refused = CliRunner().invoke(app, ["eval", "--run", run])
    assert refused.exit_code == 2, refused.output
    assert f"{run}: no metrics_train.json, so the run has not finished" in " ".join(refused.output.split())
