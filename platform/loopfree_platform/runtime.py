"""Process runtime shared by every product: Ray start-up, the submitted job's upload folder.

Every driver (distill, serve, generate, evaluate) connects to Ray through `ensure_ray`, so a local
instance is started the same way everywhere: loopback only, no token, enough logical CPUs for Ray Data.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

_connected_here = False  # ensure_ray started or connected Ray in this process (release_ray undoes it)


def ensure_ray(address: str | None = None, num_cpus: int | None = None, serve: bool = False) -> None:
    """Connect to a cluster (address or RAY_ADDRESS), or start a local instance bound to 127.0.0.1.

    serve: the local instance will host Ray Serve replicas, whose gRPC servers need the set-up hook
    `grpc_servers_on_loopback`. Only then: a job-wide runtime environment makes every worker start go
    through Ray's runtime-env agent (a 4-step smoke distillation took 94 s with it, 50 s without)."""
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
    _loopback_only()
    # Ray Train V2 hands worker reports to the controller at its health-check poll (2 s by default), so
    # every ray.train.report costs up to that long; a small job reporting each step spends most of its
    # time waiting. 0.25 s measured: 40-step smoke job 134 s -> 63 s (benchmarks/results/distill_job.md).
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance needs no token
    # More logical CPUs than cores (below), so torch processes share cores: OpenMP threads that spin while
    # they wait then burn the cores the others need (docs/architecture.md, "A local instance").
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Train workers plus Ray Data tasks: more logical CPUs than cores, or the data tasks starve (docs/architecture.md).
    ray.init(num_cpus=num_cpus or max(8, 2 * (os.cpu_count() or 2)), include_dashboard=False,
             runtime_env={"worker_process_setup_hook": "loopfree_platform.runtime.grpc_servers_on_loopback"}
             if serve else None)
    node_ip = ray.util.get_node_ip_address()
    if node_ip != "127.0.0.1":  # never leave a private instance reachable from the network
        ray.shutdown()
        raise RuntimeError(f"the local Ray instance took node address {node_ip}, not 127.0.0.1; not started")


def _loopback_only() -> None:
    """Make the local instance's node address, and so every server it binds, 127.0.0.1.

    Ray takes the machine's network address as the node address (and turns a requested 127.0.0.1 into it)
    unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and it reads that variable once, when `ray` is first imported;
    any earlier import (a user's, Ray Train's) would leave GCS, raylet and the agents on the network
    address. So set the variable for the processes Ray spawns, and the constant Ray already read for this
    one (docs/architecture.md, "Loopback only").
    """
    # private: Ray offers no public setting for a value it has already read (tests/test_ray_private_apis.py)
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def grpc_servers_on_loopback() -> None:
    """Worker set-up hook of a local instance: gRPC servers a worker opens on a wildcard address open on
    127.0.0.1 instead.

    Ray Serve 2.60 opens each replica's inter-deployment gRPC server on "[::]:0" whatever the node
    address; on a loopback-only node its callers dial 127.0.0.1 anyway, so nothing else changes.
    """
    # private: Serve binds this server to "[::]:0" with no public option (tests/test_ray_private_apis.py)
    from ray._common import tls_utils

    add_port = tls_utils.add_port_to_grpc_server
    if getattr(add_port, "loopback_only", False):
        return

    def add_port_on_loopback(server, address: str):
        host, _, port = address.rpartition(":")
        return add_port(server, f"127.0.0.1:{port}" if host in ("[::]", "0.0.0.0", "") else address)

    add_port_on_loopback.loopback_only = True
    tls_utils.add_port_to_grpc_server = add_port_on_loopback


def submitted_upload() -> Path | None:
    """The folder a submitted Ray job runs in, if this is one: Ray unpacks each uploaded working directory
    into `.../working_dir_files/_ray_pkg_<hash of its content>/` and starts the entrypoint there, so the
    folder changes with every edit to the tree and is deleted with the upload."""
    cwd = Path.cwd()
    return next((p for p in (cwd, *cwd.parents) if p.name.startswith("_ray_pkg_")), None)


def shipped_code_warning() -> str | None:
    """In a submitted job whose upload carries `platform/`, a warning if `loopfree_platform` is imported from
    elsewhere (the cluster's installed copy): edits to the uploaded platform would silently not run."""
    upload = submitted_upload()
    running = Path(__file__).resolve().parent  # this module's package: the loopfree_platform that runs
    if upload is None or not (upload / "platform" / "loopfree_platform").is_dir():
        return None
    if any(p.name.startswith("_ray_pkg_") for p in running.parents):
        return None  # the upload's own copy (working_dir or py_modules)
    return (f"warning: loopfree_platform runs from {running} (installed on the cluster), not from the uploaded "
            "platform/; submit with --runtime-env-json '{\"py_modules\": [\"platform/loopfree_platform\"]}' "
            "(README) or `loopfree submit` to run the uploaded code")


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
def without_env(name: str):
    """Hide one environment variable while the block runs: processes started meanwhile (a local Ray's GCS and
    raylet, and through the raylet every worker and replica) never inherit it. This process keeps it."""
    value = os.environ.pop(name, None)
    try:
        yield
    finally:
        if value is not None:
            os.environ[name] = value
