"""Where an optimiser step's wall time goes: waiting for data, forward+backward, optimiser.

Each phase ends with a device synchronise (CUDA kernels run asynchronously, so without it
the time of one phase would be billed to the next); on CPU the synchronise is a no-op.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch

PHASES = ("data_wait", "compute", "optimizer")


class StepTimer:
    """Seconds per phase of the current step; ``start_step()`` when a step's data is in hand."""

    def __init__(self, device: torch.device) -> None:
        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self._mark = time.perf_counter()

    def start_step(self) -> None:
        """Zero the phases and bill the time since the previous step ended (or the timer
        started) to ``data_wait``."""
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.seconds["data_wait"] = time.perf_counter() - self._mark

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - started

    def step_done(self) -> None:
        """Start counting the next step's data wait from now."""
        self._mark = time.perf_counter()

    def scalars(self) -> dict[str, float]:
        return {f"throughput/{name}_s": s for name, s in self.seconds.items()}
