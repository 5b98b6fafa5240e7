"""Distribution metrics on feature sets: pure functions, features in, numbers out.

- Fréchet distance (FID when the features are Inception pool features; Heusel et al. 2017).
- Precision / recall on k-NN manifolds (Kynkäänniemi et al. 2019) and density / coverage (Naeem et al.
  2020), computed together as PRDC with one k (Naeem et al. use k = 5 for all four).
- CLIP score: mean cosine of paired image and text embeddings, on the paper's 0-1 scale (SD2.1 scores
  0.328 in the paper's Table 1, docs/method.md), NOT the x100 scale of some libraries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Rows of real features per block when comparing with all fake features: bounds memory to
# CHUNK x max(N, M) distances, so 30k x 30k (COCO-30K) never materialises a 7 GB matrix.
CHUNK = 2048


@dataclass(frozen=True)
class GaussianStats:
    """Mean (D,) and covariance (D, D) of a feature set, float64; what FID needs from a reference."""

    mu: torch.Tensor
    sigma: torch.Tensor
    count: int


def gaussian_stats(features: torch.Tensor) -> GaussianStats:
    """(N, D) features -> mean and unbiased covariance in float64."""
    if features.dim() != 2:
        raise ValueError(f"features must be (N, D), got {tuple(features.shape)}")
    if len(features) < 2:
        raise ValueError("a feature set needs at least 2 rows to estimate a covariance")
    x = features.double()
    return GaussianStats(x.mean(0), torch.cov(x.T).reshape(x.shape[1], -1), len(x))


def _sqrt_trace_product(cov_a: torch.Tensor, cov_b: torch.Tensor) -> torch.Tensor:
    """tr(sqrt(A B)) for symmetric PSD A, B, via the symmetric form sqrt(A)^T B sqrt(A) (same spectrum)."""
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = (vecs * vals.clamp(min=0).sqrt()) @ vecs.T
    middle = root_a @ cov_b @ root_a
    return torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()


def frechet_distance_from_stats(a: GaussianStats, b: GaussianStats) -> float:
    """|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr(sqrt(S_a S_b)), in float64."""
    if a.mu.shape != b.mu.shape:
        raise ValueError(f"statistics of different feature sizes: {tuple(a.mu.shape)} and {tuple(b.mu.shape)}")
    mu_a, mu_b = a.mu.double(), b.mu.double()
    cov_a, cov_b = a.sigma.double(), b.sigma.double()
    fd = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * _sqrt_trace_product(cov_a, cov_b)
    return float(fd)


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) (Heusel et al. 2017, FID).

    When a set has fewer rows than features (small evaluations: N < 2048), the covariances have rank
    < N and the sqrt term has an exact N x M form: with centred features X_a (N, D), X_b (M, D),
    S_a S_b = X_a^T (X_a X_b^T X_b) / c, whose non-zero eigenvalues are the squared singular values of
    X_a X_b^T / sqrt(c), c = (N - 1)(M - 1). So tr(sqrt(S_a S_b)) = ||X_a X_b^T||_* / sqrt(c), an SVD of
    an N x M matrix instead of eigendecompositions of D x D ones: faster, and exactly 0 for a set
    against itself (no sqrt of rounding noise in the null space)."""
    if features_a.dim() != 2 or features_b.dim() != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(features_a.shape)} and {tuple(features_b.shape)}")
    a, b = gaussian_stats(features_a), gaussian_stats(features_b)
    if min(a.count, b.count) >= features_a.shape[1]:
        return frechet_distance_from_stats(a, b)
    xa, xb = features_a.double() - a.mu, features_b.double() - b.mu
    sqrt_trace = torch.linalg.svdvals(xa @ xb.T).sum() / ((a.count - 1) * (b.count - 1)) ** 0.5
    return float((a.mu - b.mu).square().sum() + a.sigma.trace() + b.sigma.trace() - 2 * sqrt_trace)


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (len(a), len(b)) in float64; the mm formulation is exact enough in float64."""
    return torch.cdist(a, b)


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) distance of each row to its k-th nearest OTHER row (the row itself is the 0-th neighbour)."""
    if not 1 <= k < len(features):
        raise ValueError(f"k must be in [1, N-1] = [1, {len(features) - 1}], got {k}")
    x = features.double()
    return torch.cat([_distances(x[i:i + CHUNK], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), CHUNK)])


def prdc_rows(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, torch.Tensor]:
    """Per-row counts behind PRDC (see `prdc`), real (N, D) against fake (M, D):
      "fake_inside" (M,) bool, some real ball holds fake j;  "density_count" (M,) float64, how many real balls do;
      "real_found" (N,) bool, some fake ball holds real i;   "covered" (N,) bool, real i's ball holds some fake.
    Per-row, so a caller can split recall and coverage by a label of the real rows."""
    if real.dim() != 2 or fake.dim() != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(real.shape)} and {tuple(fake.shape)}")
    real_r, fake_r = knn_radii(real, k), knn_radii(fake, k)
    x, f = real.double(), fake.double()
    fake_inside = torch.zeros(len(f), dtype=torch.bool)
    density_count = torch.zeros(len(f), dtype=torch.float64)
    real_found = torch.zeros(len(x), dtype=torch.bool)
    covered = torch.zeros(len(x), dtype=torch.bool)
    for i in range(0, len(x), CHUNK):
        d = _distances(x[i:i + CHUNK], f)  # (chunk, M)
        in_real_ball = d < real_r[i:i + CHUNK, None]
        fake_inside |= in_real_ball.any(0)
        density_count += in_real_ball.sum(0)
        real_found[i:i + CHUNK] = (d < fake_r[None, :]).any(1)
        covered[i:i + CHUNK] = d.min(1).values < real_r[i:i + CHUNK]
    return {"fake_inside": fake_inside, "density_count": density_count, "real_found": real_found, "covered": covered}


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, F1, density and coverage of fake features (M, D) against real ones (N, D).

    With r_i the k-NN radius of real i among the reals and s_j that of fake j among the fakes:
      precision = mean_j [exists i: |f_j - x_i| < r_i]      recall   = mean_i [exists j: |x_i - f_j| < s_j]
      density   = 1/(k M) sum_j sum_i [|f_j - x_i| < r_i]   coverage = mean_i [min_j |x_i - f_j| < r_i]
      F1 = 2 P R / (P + R)  (0 when P + R = 0).
    """
    rows = prdc_rows(real, fake, k)
    precision, recall = rows["fake_inside"].double().mean().item(), rows["real_found"].double().mean().item()
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "density": rows["density_count"].sum().item() / (k * len(fake)),
            "coverage": rows["covered"].double().mean().item()}


def clip_score(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> float:
    """Mean cosine similarity of paired embeddings (N, D) and (N, D): the paper's 0-1 scale (x100 elsewhere).

    Negative cosines are kept (not clamped to 0), so the mean is an unbiased paired similarity."""
    if image_embeds.shape != text_embeds.shape or image_embeds.dim() != 2 or len(image_embeds) == 0:
        raise ValueError(f"embeddings must be paired (N, D) tensors, got {tuple(image_embeds.shape)} "
                         f"and {tuple(text_embeds.shape)}")
    cos = torch.nn.functional.cosine_similarity(image_embeds.double(), text_embeds.double(), dim=1)
    return float(cos.mean())
