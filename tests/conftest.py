import pytest
import torch

from loopfree.presets import tiny


@pytest.fixture(scope="session")
def tiny_components():
    """One random tiny SD2.1-base-shaped model per test session; tests must not modify it in place."""
    return tiny().build(seed=0)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)
