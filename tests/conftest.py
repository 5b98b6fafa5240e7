import copy
import socket
from pathlib import Path

import pytest
import torch
import yaml

from loopfree.presets import tiny

ROOT = Path(__file__).resolve().parents[1]
INTEGRATION = ROOT / "tests" / "integration"
CLUSTER_FILES = {"test_cluster_submit.py", "test_cluster_faults.py"}  # ray start + ray job submit
EVALUATE_FILE = "test_evaluate.py"  # run early: see pytest_collection_modifyitems
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
    # The `ray start` tests first, before any test starts the session's local Ray instance (`ray_local`, kept to
    # the end): on 2 cores their head and nodes beside it overloaded the GCS ("node timed out during startup",
    # "No available agent to submit job"). Then the evaluate job, the first on `ray_local`: late in a full run
    # its feature stage (2 CPUs a worker) waited past 300 s, twice in CI, while alone or after any one group of
    # Ray tests it takes 35 s.
    items.sort(key=lambda item: (Path(item.path).name not in CLUSTER_FILES, Path(item.path).name != EVALUATE_FILE))


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
