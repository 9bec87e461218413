"""Gloo process groups for tests that spawn their own ranks (``torch.multiprocessing.spawn``).

``gloo_rank`` joins the group on loopback and, on the way out, waits for every rank before
tearing the group down: a rank that destroys its group while a peer still talks to it can
abort that peer (``terminate called without an active exception``, SIGABRT).
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator

import torch


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def gloo_rank(rank: int, world: int, port: int, **env: str) -> Iterator[None]:
    """Rank ``rank`` of ``world`` on 127.0.0.1:``port``, one CPU thread, ``env`` exported first."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo", DS_ACCELERATOR="cpu", **env)
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()
