"""Process runtime shared by every product: Ray start-up and the scoped MLflow tracking URI.

Every driver (distill, serve, generate, evaluate) connects to Ray through `ensure_ray`, so a local
instance is started the same way everywhere: loopback only, no token, enough logical CPUs for Ray Data.
"""

from __future__ import annotations

import contextlib
import os

_connected_here = False  # ensure_ray started or connected Ray in this process (release_ray undoes it)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (address or RAY_ADDRESS), or start a local instance bound to 127.0.0.1."""
    global _connected_here
    import ray

    if ray.is_initialized():
        return
    _connected_here = True
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")  # per-operator bars drown the training log
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only (docs/architecture.md)
    # Ray Train V2 hands worker reports to the controller at its health-check poll (2 s by default), so
    # every ray.train.report costs up to that long; a small job reporting each step spends most of its
    # time waiting. 0.25 s measured: 40-step smoke job 134 s -> 63 s (benchmarks/results/distill_job.md).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance needs no token
    # Train workers plus Ray Data tasks: more logical CPUs than cores, or the data tasks starve (docs/architecture.md).
    ray.init(num_cpus=num_cpus or max(8, 2 * (os.cpu_count() or 2)), include_dashboard=False,
             _node_ip_address="127.0.0.1")



def release_ray() -> None:
    """Disconnect from Ray (stopping a local instance) if `ensure_ray` connected this process; a Ray that
    was already up (a test session's, a caller's) is left running."""
    global _connected_here
    if not _connected_here:
        return
    _connected_here = False
    import ray

    ray.shutdown()


@contextlib.contextmanager
def fluent_tracking_uri(uri: str):
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI for the whole process; scope it and restore."""
    import mlflow

    saved_env, saved_uri = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env
