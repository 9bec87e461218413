"""Suite-wide set-up: one persistent DISTREC_HOME (fetched data and converted models are
reused across runs), loopback-only networking, and one local Ray cluster per session."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fixtures_data import shared_home  # noqa: E402
from s3_server import NODE_CREDENTIALS  # noqa: E402

shared_home()
# The local Ray cluster's processes resolve S3 credentials from their own environment, as
# real nodes do (env, ~/.aws, instance role): give them the test server's before Ray starts.
for key, value in NODE_CREDENTIALS.items():
    os.environ.setdefault(key, value)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster shared by every test that needs one (start-up costs ~6 s)."""
    import ray

    from distrec.config import RayConfig
    from distrec.train.launcher import init_ray

    init_ray(RayConfig(num_workers=2))
    yield ray
    ray.shutdown()


def pytest_collection_modifyitems(config, items):
    """Run tests marked ``ray_cluster`` last: they stop every Ray process on the machine
    (``ray stop``), which would pull the shared local cluster from under later tests."""
    items.sort(key=lambda item: item.get_closest_marker("ray_cluster") is not None)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run faster on one intra-op thread, much faster on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
