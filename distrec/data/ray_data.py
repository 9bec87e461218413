"""Ray Data settings shared by every distrec pipeline."""

from __future__ import annotations


def quiet_ray_data() -> None:
    """No per-second progress bars or execution-plan logs from Ray Data (driver and workers)."""
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
