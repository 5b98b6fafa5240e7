"""Distribution metrics on feature sets: pure functions, features in, numbers out."""

from __future__ import annotations

import torch


def _sqrt_trace_product(cov_a: torch.Tensor, cov_b: torch.Tensor) -> torch.Tensor:
    """tr(sqrt(A B)) for symmetric PSD A, B, via the symmetric form sqrt(A)^T B sqrt(A) (same spectrum)."""
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = (vecs * vals.clamp(min=0).sqrt()) @ vecs.T
    middle = root_a @ cov_b @ root_a
    return torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) (Heusel et al. 2017, FID):
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr(sqrt(S_a S_b)), computed in float64."""
    if features_a.dim() != 2 or features_b.dim() != 2 or features_a.shape[1] != features_b.shape[1]:
        raise ValueError(f"features must be (N, D) with equal D, got {tuple(features_a.shape)} and {tuple(features_b.shape)}")
    if min(len(features_a), len(features_b)) < 2:
        raise ValueError("each feature set needs at least 2 rows to estimate a covariance")
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    fd = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * _sqrt_trace_product(cov_a, cov_b)
    return float(fd)
