"""Fault injection waits for Ray Train to register the checkpoint it will restart from."""

import json
import threading
import time

from distrec.train.faults import SNAPSHOT, committed_step, wait_until_committed


def _write_snapshot(folder, step):
    latest = None if step is None else {"checkpoint_dir_name": f"checkpoint_{step}", "metrics": {"step": step, "epoch": 0}}
    (folder / SNAPSHOT).write_text(json.dumps({"checkpoint_results": [], "latest_checkpoint_result": latest}))


def test_committed_step_reads_the_latest_registered_checkpoint(tmp_path):
    assert committed_step(tmp_path) is None  # no snapshot yet
    assert wait_until_committed(tmp_path, 0, wait_s=0.0)  # nothing saved yet: nothing to wait for
    (tmp_path / SNAPSHOT).write_text('{"latest_check')  # being rewritten
    assert committed_step(tmp_path) is None
    _write_snapshot(tmp_path, None)
    assert committed_step(tmp_path) is None
    _write_snapshot(tmp_path, 6)
    assert committed_step(tmp_path) == 6


def test_wait_returns_once_the_step_is_registered_and_times_out_otherwise(tmp_path):
    _write_snapshot(tmp_path, 3)
    assert wait_until_committed(tmp_path, 3, wait_s=0.0)
    started = time.monotonic()
    assert not wait_until_committed(tmp_path, 6, wait_s=0.3, poll_s=0.05)
    assert time.monotonic() - started >= 0.3

    later = threading.Timer(0.3, _write_snapshot, args=(tmp_path, 6))
    later.start()
    started = time.monotonic()
    assert wait_until_committed(tmp_path, 6, wait_s=10.0, poll_s=0.05)
    assert 0.25 <= time.monotonic() - started < 5.0
    later.join()
