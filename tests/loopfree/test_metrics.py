import numpy as np
import pytest
import scipy.linalg
import torch

from loopfree.metrics import clip_score, frechet_distance, frechet_distance_from_stats, gaussian_stats, prdc


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


@pytest.mark.parametrize("sizes", [(20, 30), (30, 20), (64, 64)])
def test_fewer_rows_than_features_uses_the_exact_gram_form(sizes):
    rng = np.random.default_rng(sum(sizes))
    a, b = rng.normal(size=(sizes[0], 64)), rng.normal(size=(sizes[1], 64)) * 0.7 + 0.2
    gram = frechet_distance(torch.tensor(a), torch.tensor(b))
    assert gram == pytest.approx(scipy_frechet(a, b), rel=1e-6, abs=1e-4)
    assert gram == pytest.approx(frechet_distance_from_stats(gaussian_stats(torch.tensor(a)), gaussian_stats(torch.tensor(b))),
                                 rel=1e-6, abs=1e-4)
    if min(sizes) < 64:  # the Gram form has no null-space rounding noise
        assert abs(frechet_distance(torch.tensor(a), torch.tensor(a))) < 1e-9


def test_zero_for_identical_sets_and_shift():
    a = torch.randn(300, 16, dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-8
    assert frechet_distance(a, a + 2.0) == pytest.approx(16 * 4.0, rel=1e-9)


def test_frechet_distance_refuses_features_of_unequal_width_or_fewer_than_two_rows():
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(torch.randn(10, 3), torch.randn(10, 4))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.randn(1, 3), torch.randn(10, 3))


def test_frechet_from_saved_stats_matches_features():
    a, b = torch.randn(200, 8, dtype=torch.float64), torch.randn(150, 8, dtype=torch.float64) + 0.5
    assert frechet_distance_from_stats(gaussian_stats(a), gaussian_stats(b)) == pytest.approx(frechet_distance(a, b), rel=1e-12)


@pytest.mark.parametrize("k", [3, 5])
def test_prdc_matches_the_prdc_package(k, monkeypatch):
    from prdc import compute_prdc

    monkeypatch.setattr("loopfree.metrics.CHUNK", 64)  # exercise the chunked path on a small set
    rng = np.random.default_rng(k)
    real = rng.normal(size=(300, 16))
    fake = rng.normal(size=(250, 16)) * 1.2 + 0.3
    expected = compute_prdc(real, fake, nearest_k=k)
    ours = prdc(torch.tensor(real), torch.tensor(fake), k=k)
    p, r = expected["precision"], expected["recall"]
    expected["f1"] = 2 * p * r / (p + r)
    for key in ("precision", "recall", "f1", "density", "coverage"):
        assert ours[key] == pytest.approx(expected[key], abs=1e-4), key
    assert 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1  # a meaningful, non-saturated comparison


def test_prdc_of_a_set_against_itself_and_bad_k():
    x = torch.randn(50, 4)
    scores = prdc(x, x, k=5)
    assert scores["precision"] == scores["recall"] == scores["coverage"] == 1.0
    with pytest.raises(ValueError, match="k must be"):
        prdc(x[:5], x, k=5)


def test_clip_score_is_the_mean_paired_cosine():
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(40, 12)), rng.normal(size=(40, 12))
    expected = np.mean((img * txt).sum(1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1))
    assert clip_score(torch.tensor(img), torch.tensor(txt)) == pytest.approx(expected, abs=1e-4)
    assert clip_score(torch.tensor(img), torch.tensor(img) * 3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="paired"):
        clip_score(torch.randn(3, 4), torch.randn(2, 4))


def test_off_manifold_generated_outliers_raise_recall_but_not_coverage():
    """Recall's balls have the GENERATED set's k-NN radii, so a few far outliers among tight samples get wide balls
    that reach many real points; coverage's balls have the real set's radii (Naeem et al. 2020)."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(400, 8, generator=g)
    tight = 0.05 * torch.randn(400, 8, generator=g)  # every sample near the real mean: a collapsed generator
    outliers = 6.0 * torch.randn(40, 8, generator=g)  # far from every real point
    collapsed, spread = prdc(real, tight), prdc(real, torch.cat([tight[:360], outliers]))
    assert spread["recall"] > collapsed["recall"] + 0.2  # the outliers' wide balls count as diversity
    assert spread["coverage"] <= collapsed["coverage"]  # but no more real points have a generated neighbour
    assert spread["precision"] < collapsed["precision"]


def test_prdc_rows_are_the_per_row_flags_prdc_averages():
    from loopfree.metrics import prdc_rows

    torch.manual_seed(0)
    real, fake = torch.randn(40, 3), torch.randn(30, 3) + 0.5
    rows, whole = prdc_rows(real, fake, k=3), prdc(real, fake, k=3)
    assert rows["real_found"].shape == (40,) and rows["fake_inside"].shape == (30,)
    assert rows["real_found"].double().mean().item() == whole["recall"]
    assert rows["covered"].double().mean().item() == whole["coverage"]
    assert rows["fake_inside"].double().mean().item() == whole["precision"]
