"""Randomness of one training iteration, keyed so that it does not depend on how the batch is split.

Each sample draws from its own generator seeded by (seed, step, global sample index), and batch-level
decisions (prompt dropout) from one generator seeded by (seed, step). So 2 workers x batch 1 draw
exactly what 1 worker x batch 2 draws, and a resumed run draws what the uninterrupted run drew, with
no RNG state to checkpoint. Everything is drawn on the CPU, so a seed means the same on any device.
"""

from __future__ import annotations

import torch

_MIX = 1_000_003


class IterationRNG:
    def __init__(self, seed: int, step: int, first_index: int = 0, batch_size: int = 1):
        base = (seed * _MIX + step) * _MIX
        self.shared = torch.Generator().manual_seed(base)
        self.samples = [torch.Generator().manual_seed(base + 1 + first_index + i) for i in range(batch_size)]

    def randn(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
        """(B, *shape) standard normal, row b from sample b's generator."""
        return torch.stack([torch.randn(shape, generator=g) for g in self.samples]).to(device)

    def randint(self, low: int, high_inclusive: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """(B,) integers in [low, high_inclusive], one per sample."""
        return torch.cat([torch.randint(low, high_inclusive + 1, (1,), generator=g) for g in self.samples]).to(device)

    def shared_uniform(self) -> float:
        """One U[0, 1) draw shared by the whole global batch."""
        return float(torch.rand((), generator=self.shared))
