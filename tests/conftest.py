import copy
import fcntl
import os
import socket
import uuid
from pathlib import Path

import pytest
import torch
import yaml

from loopfree.presets import tiny

ROOT = Path(__file__).resolve().parents[1]
INTEGRATION = ROOT / "tests" / "integration"
CLUSTER_FILES = {"test_cluster_submit.py", "test_cluster_faults.py"}  # ray start + ray job submit
EVALUATE_FILE = "test_evaluate.py"  # run early: see pytest_collection_modifyitems
# The first of the two test streams under xdist (see pytest_xdist_make_scheduler), besides the cluster files
FIRST_STREAM_FILES = {EVALUATE_FILE, "test_distill.py", "test_engines.py", "test_storage_faults.py", "test_tracking.py"}
RAY_FIXTURES = {"ray_local"}  # a test that starts Ray is an integration test wherever it lives


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m selection
def pytest_collection_modifyitems(config, items):
    """Test tiers: all of tests/integration is `integration`, its ray-start files also `cluster`; elsewhere a
    test that uses the local Ray instance is `integration` too, and other slow tests say so explicitly
    (@pytest.mark.integration). `pytest -m "not integration"` is the fast tier."""
    for item in items:
        path = Path(item.path)
        if INTEGRATION in path.parents:
            item.add_marker(pytest.mark.integration)
            if path.name in CLUSTER_FILES:
                item.add_marker(pytest.mark.cluster)
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)
        if item.get_closest_marker("cluster") and not item.get_closest_marker("integration"):
            item.add_marker(pytest.mark.integration)  # every cluster test is an integration test
    # Order: the `ray start` tests first, before any test starts a local Ray instance beside them (on 2 cores
    # their head and nodes beside another instance overloaded the GCS: "node timed out during startup", "No
    # available agent to submit job"). Then the fast tier. Then the evaluate job, the first on its worker's
    # `ray_local`: late in a full run its feature stage (2 CPUs a worker) waited past 300 s, twice in CI, while
    # alone or after any one group of Ray tests it takes 35 s.
    items.sort(key=lambda item: (Path(item.path).name not in CLUSTER_FILES, bool(item.get_closest_marker("integration")),
                                 Path(item.path).name != EVALUATE_FILE))


def pytest_xdist_make_scheduler(config, log):
    """Two xdist workers (pyproject's addopts), two streams, each run by one worker in the order above with its own
    local Ray instance: the cluster files, the evaluate job, the distillation runs, storage faults and tracking;
    then the fast tier and every other Ray test (serving, sweeps, the CLI's local Ray). Run one after the other,
    the tests left the 2 cores idle about 40% of the time (Ray and service start-ups, polling, subprocess
    waits); side by side they keep them busy, provided torch's threads wait passively (tests/__init__.py)."""
    from xdist.scheduler import LoadScopeScheduling

    class TwoStreams(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "first" if Path(nodeid.split("::")[0]).name in CLUSTER_FILES | FIRST_STREAM_FILES else "second"

    return TwoStreams(config, log)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # outside pytest-timeout's wrapper: waiting here is not the test's
def pytest_runtest_protocol(item, nextitem):
    """Under xdist: a `ray start` test holds a lock that other Ray tests wait for (see the order above); a fast-tier
    test beside a running `ray start` test runs at the lowest CPU priority, so the cluster's nodes and training
    workers keep the CPU they would have alone."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    cluster = item.get_closest_marker("cluster") is not None
    ray = item.get_closest_marker("integration") is not None
    global _cluster_lock_fd
    if cluster and _cluster_lock_fd is None:
        _cluster_lock_fd = _lock_file(fcntl.LOCK_EX)  # held until the last `ray start` test in a row ends
    elif ray and not cluster:
        os.close(_lock_file(fcntl.LOCK_SH))  # waits while another worker runs `ray start` tests
    _set_nice(FAST_TIER_NICE if not ray and _cluster_tests_running() else 0)
    yield
    if _cluster_lock_fd is not None and (nextitem is None or nextitem.get_closest_marker("cluster") is None):
        os.close(_cluster_lock_fd)
        _cluster_lock_fd = None


FAST_TIER_NICE = 19
_cluster_lock_fd: int | None = None  # this worker's exclusive lock while it runs `ray start` tests


def pytest_configure(config):
    """The controller names the run (xdist hands the name to its workers), so that it can remove the lock file."""
    if not hasattr(config, "workerinput") and getattr(config.option, "testrunuid", "") is None:
        config.option.testrunuid = uuid.uuid4().hex


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput") and getattr(session.config.option, "testrunuid", None):
        _lock_path(session.config.option.testrunuid).unlink(missing_ok=True)


def _lock_path(testrunuid: str) -> Path:
    return Path(f"/tmp/loopfree-tests-{testrunuid}.lock")


def _lock_file(mode: int) -> int:
    """An flock on a file shared by this run's xdist workers; returns its descriptor, locked in mode."""
    fd = os.open(_lock_path(os.environ["PYTEST_XDIST_TESTRUNUID"]), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, mode)
    return fd


def _cluster_tests_running() -> bool:
    try:
        fd = _lock_file(fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    os.close(fd)
    return False


def _set_nice(target: int) -> None:
    """Every thread of this worker (torch's among them: Linux keeps a niceness per thread) to target."""
    for tid in os.listdir("/proc/self/task"):
        try:
            if os.getpriority(os.PRIO_PROCESS, int(tid)) != target:
                os.setpriority(os.PRIO_PROCESS, int(tid), target)
        except (PermissionError, ProcessLookupError):  # lowering it again needs root; a thread may have ended
            pass


@pytest.fixture(scope="session")
def tiny_components():
    """One random tiny SD2.1-base-shaped model per test session; tests must not modify it in place."""
    return tiny().build(seed=0)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A saved TiUE pipeline (tiny preset, random weights, K=4) in diffusers layout: what a user serves."""
    from loopfree.pipeline import TiUEPipeline

    path = tmp_path_factory.mktemp("tiny-pipeline")
    TiUEPipeline.from_components(tiny().build(seed=0), num_steps=4).save_pretrained(path)
    return path


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint (moto's standalone server) on 127.0.0.1, with test credentials in the environment.

    Started before Ray so that Ray's worker processes inherit the settings.
    """
    import os

    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing-secret",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="loopfree-test")
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_endpoint, free_port):
    """One `mlflow server` per test session (sqlite, artifacts on the S3 endpoint) for the `ray start` tests'
    jobs, which tell their runs apart by job name and register under different model names. Yields its URL
    without waiting (about 9 s to start, so a test starts its cluster meanwhile and then waits for /health)."""
    import os

    from tests.cluster import start_mlflow

    port = free_port()
    server = start_mlflow(tmp_path_factory.mktemp("mlflow"), port, {**os.environ, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint})
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One local Ray instance per test session, bound to 127.0.0.1 (docs/architecture.md)."""
    import ray
    from loopfree_platform.runtime import ensure_ray

    ensure_ray(num_cpus=8)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def free_port():
    """free_port() -> a TCP port on 127.0.0.1 that was free a moment ago (a function, usable from any scope)."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick


@pytest.fixture
def write_job(tmp_path):
    """write_job(data, name="job.yaml", folder=tmp_path) writes a dict as YAML and returns the file's path."""

    def write(data: dict, name: str = "job.yaml", folder: Path | None = None) -> Path:
        path = Path(folder or tmp_path) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data))
        return path

    return write


def merged(base: dict, overrides: dict) -> dict:
    """base with overrides merged in, nested dicts key by key; any other value replaces (copies, no aliasing)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both_dicts else copy.deepcopy(value)
    return out


@pytest.fixture(scope="session")
def smoke_job():
    """smoke_job(overrides=None) -> jobs/smoke.yaml as a fresh dict with nested overrides merged in.

    data.paths are made absolute, so the job does not depend on the working directory; pass
    {"data": {"paths": [...]}} to change them."""
    base = yaml.safe_load((ROOT / "jobs" / "smoke.yaml").read_text())
    base["data"]["paths"] = [str(ROOT / p) for p in base["data"]["paths"]]

    def make(overrides: dict | None = None) -> dict:
        return merged(base, overrides or {})

    return make
