import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/imagezoo.py

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# the remembered model transforms (models/transform.py) of this test session, not the user's
os.environ.setdefault("DEEPSCOPE_CACHE", tempfile.mkdtemp(prefix="deepscope-cache-"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (start-up costs seconds)."""
    import logging

    import ray

    if not ray.is_initialized():
        # address="local": a new cluster, never one that `ray start` left on this machine; its processes' logs
        # are not forwarded to the tests' stderr, as io/cluster.py's driver does not forward them to a command's
        # (a GCS line arriving while a test reads a command's one error line made it two)
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield
    ray.shutdown()
