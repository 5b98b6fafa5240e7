import numpy as np
import pytest
import scipy.linalg
import torch

from loopfree.metrics import frechet_distance


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula with scipy's general matrix square root (independent implementation)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim", [1, 8, 64])
def test_matches_scipy(dim):
    rng = np.random.default_rng(dim)
    a = rng.normal(size=(500, dim))
    b = rng.normal(size=(400, dim)) @ rng.normal(size=(dim, dim)) * 0.5 + 0.3
    assert frechet_distance(torch.tensor(a), torch.tensor(b)) == pytest.approx(scipy_frechet(a, b), rel=1e-6, abs=1e-4)


def test_zero_for_identical_sets_and_shift():
    a = torch.randn(300, 16, dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, a + 2.0) == pytest.approx(16 * 4.0, rel=1e-9)


def test_bad_shapes():
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(10, 3))
