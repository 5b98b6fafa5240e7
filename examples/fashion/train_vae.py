"""Stage 1 of the teacher: a small AutoencoderKL on Fashion-MNIST (32x32x3 -> 4x8x8 latents).

Loss: mean squared reconstruction error plus a small KL term (weight `kl_weight` on the per-image KL
summed over latent elements, as SD's VAE uses 1e-6) that keeps the posterior a distribution without
forcing the latents towards N(0, I); the latent scale is then fixed by `scaling_factor` = 1 / std of
the training latents, exactly how SD's 0.18215 was chosen. No perceptual or adversarial loss: at 32 px
on Fashion-MNIST mean squared error alone reconstructs well and trains in minutes on a CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from examples.fashion.data import to_model_images
from examples.fashion.models import new_vae
from examples.fashion.training import Log, learning_rate, load_checkpoint, save_checkpoint


@dataclass(frozen=True)
class VAEConfig:
    steps: int = 700
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 100
    kl_weight: float = 1e-6
    checkpoint_every: int = 100
    seed: int = 0


def train_vae(images: torch.Tensor, cfg: VAEConfig, work: Path, log: Log) -> AutoencoderKL:
    """images uint8 (N, 1, 28, 28) -> trained VAE (resumes from work/vae.pt; scaling factor still 1.0)."""
    torch.manual_seed(cfg.seed)
    vae = new_vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    start, spent = 0, 0.0
    state = load_checkpoint(work / "vae.pt")
    if state:
        vae.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start, spent = state["step"], state["wall_s"]
    gen = torch.Generator().manual_seed(cfg.seed + start)  # resumed runs draw fresh, still reproducible batches
    t0 = time.perf_counter()
    for step in range(start, cfg.steps):
        x = to_model_images(images[torch.randint(len(images), (cfg.batch_size,), generator=gen)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        mse = (recon - x).pow(2).mean()
        kl = posterior.kl().mean()
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg.lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        (mse + cfg.kl_weight * kl).backward()
        opt.step()
        wall = spent + time.perf_counter() - t0
        if (step + 1) % 50 == 0:
            log(stage="vae", step=step + 1, mse=round(mse.item(), 5), kl=round(kl.item(), 2), wall_s=round(wall, 1))
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(work / "vae.pt", {"model": vae.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                                              "wall_s": wall, "mse": mse.item()})
    return vae.eval()


@torch.no_grad()
def encode_all(vae: AutoencoderKL, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (N, 4, 8, 8) of every image, unscaled; the diffusion stage samples from them."""
    means, stds = [], []
    for i in range(0, len(images), batch_size):
        posterior = vae.encode(to_model_images(images[i:i + batch_size])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def reconstruction_mse(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Mean squared error of decode(mean latent) on held-out images, in [-1, 1] units."""
    x = to_model_images(images)
    return (vae.decode(vae.encode(x).latent_dist.mean).sample - x).pow(2).mean().item()
