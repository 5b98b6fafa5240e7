"""The optimizer of both trainable networks (docs/method.md, "Training"): Adam with the method's eps and weight
decay, the learning rate and betas of the network it trains (student or fake score)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from loopfree.config import DistillConfig


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float], config: DistillConfig) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=betas, eps=config.adam_eps, weight_decay=config.weight_decay)
