"""Connecting to Ray: one place for every layer that runs Ray tasks (the executor's passes, the
index's shard builds and graph searches), so that none of them reaches up into another to connect."""
from __future__ import annotations

import logging
import os
import sys


def quiet_ray_logging(path: str | None) -> None:
    """Ray's Python log lines go to `path` (not the console), and the C++ core's to Ray's session
    logs: a normal run's console holds deepscope's lines only."""
    ray_logger = logging.getLogger("ray")
    for h in list(ray_logger.handlers):
        ray_logger.removeHandler(h)
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        ray_logger.addHandler(handler)
    else:
        ray_logger.addHandler(logging.NullHandler())
    ray_logger.setLevel(logging.INFO)
    ray_logger.propagate = False


def ensure_ray(address: str | None = None, log_path: str | None = None) -> None:
    """Connect to Ray, or start a local cluster (never whatever `ray start` last left on this machine)."""
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    if address == "local" and "ray" not in sys.modules:
        # token authentication on, said explicitly (before Ray reads it at import): Ray then
        # generates the token without printing a warning about its default
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        # Ray starts its workers at niceness 15, below everything else on the machine: on a shared
        # laptop or CI runner the model actor then gets a fraction of a core beside any busy
        # process, the user's own included. Our workers are the job: they run at the driver's.
        os.environ.setdefault("RAY_worker_niceness", str(os.nice(0)))
    import ray

    if ray.is_initialized():
        return
    quiet_ray_logging(log_path)
    env = {k: v for k, v in os.environ.items() if k.startswith("DEEPSCOPE_")}
    ray.init(address=address, configure_logging=False, log_to_driver=False,
             include_dashboard=False if address == "local" else None,
             runtime_env={"env_vars": env} if env else None)

