"""DMD2's GAN term: a discriminator head on the fake score's bottleneck (docs/method.md, "Keeping the teacher's
diversity").

Yin et al., "Improved Distribution Matching Distillation for Fast Image Synthesis" (DMD2, NeurIPS 2024, section
4.3) attach a small classification branch to the bottleneck of the fake score's UNet and train it to tell noised
real training images from noised student samples; the student also receives the non-saturating generator loss.
Real data lets the student correct the teacher's own errors, and the discriminator penalises the dropped modes
that distribution matching alone leaves unpunished.

Notation:
    x        latents (B, C, H, W): real = the VAE's latents of training images scaled like the teacher's,
             fake = the student's x0
    x_t      sqrt(a_t) x + sqrt(1 - a_t) eps, t ~ U{fake_score_t_min .. fake_score_t_max}
    h(x_t)   the fake score's mid-block output (B, C_mid, H', W') for the empty prompt: the real images carry
             no prompt, so both sides are judged unconditionally
    D(x_t)   head(h(x_t)), one logit per sample (B,)
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn


class DiscriminatorHead(nn.Module):
    """Two 3x3 conv blocks and a global average pool over the bottleneck, then one logit per sample. GroupNorm,
    never BatchNorm: a sample's logit must not depend on the rest of its batch (loopfree/rng.py's split rule)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__()
        groups = math.gcd(32, channels)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.SiLU())
        self.out = nn.Linear(channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(B, C_mid, H', W') -> (B,) fp32 logits, whatever the UNet's precision."""
        return self.out(self.body(h.to(self.out.weight.dtype)).mean(dim=(2, 3))).squeeze(1).float()


@contextlib.contextmanager
def bottleneck(unet: nn.Module):
    """Captures the mid block's output of every forward inside the block (a forward hook: the UNet's own
    forward runs unchanged, docs/architecture.md)."""
    if getattr(unet, "mid_block", None) is None:
        raise ValueError("the fake score's UNet has no mid block (mid_block_type is None): no bottleneck to judge")
    features: list[torch.Tensor] = []
    handle = unet.mid_block.register_forward_hook(lambda module, args, output: features.append(output))
    try:
        yield features
    finally:
        handle.remove()


@torch.no_grad()
def encode_real_images(vae: nn.Module, images: torch.Tensor, batch_size: int = 250) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] -> latents (N, C, H/8, W/8) scaled like the teacher's (the posterior mean,
    so the same images always give the same latents)."""
    scale = vae.config.scaling_factor
    return torch.cat([vae.encode(b.to(vae.device, vae.dtype)).latent_dist.mean.float() * scale
                      for b in images.split(batch_size)])
