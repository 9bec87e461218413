"""StepTimer bills wall time to the phase it was spent in."""

import time

import torch

from distrec.train.step_timer import StepTimer


def test_phases_accumulate_their_own_time_and_reset_per_step():
    timer = StepTimer(torch.device("cpu"))
    time.sleep(0.05)  # the data of step 1 "arrives" late
    timer.start_step()
    for _ in range(2):  # two micro-batches
        with timer.phase("compute"):
            time.sleep(0.03)
        with timer.phase("optimizer"):
            time.sleep(0.01)
    timer.step_done()
    s = timer.scalars()
    assert set(s) == {"throughput/data_wait_s", "throughput/compute_s", "throughput/optimizer_s"}
    assert 0.05 <= s["throughput/data_wait_s"] < 0.5
    assert 0.06 <= s["throughput/compute_s"] < 0.5
    assert 0.02 <= s["throughput/optimizer_s"] < 0.5

    timer.start_step()  # step 2: data immediately available
    assert timer.scalars()["throughput/data_wait_s"] < 0.05
    assert timer.scalars()["throughput/compute_s"] == 0.0
