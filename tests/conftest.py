import pytest
import torch

from loopfree.presets import tiny


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
def ray_local(s3_endpoint):
    """One local Ray instance per test session, bound to 127.0.0.1 (DESIGN.md)."""
    import ray
    from loopfree_platform.runtime import ensure_ray

    ensure_ray(num_cpus=8)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    yield
    ray.shutdown()
