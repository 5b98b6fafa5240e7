"""Train the Fashion-MNIST teacher and save it in diffusers layout (models/fashion-teacher/README.md).

    python -m examples.fashion.train_teacher --out models/fashion-teacher --work runs/fashion-teacher

Stage 1 trains the VAE (`train_vae`); stage 2 trains the CLIP text encoder and the UNet together on
the frozen VAE's latents with the plain epsilon-prediction loss on the SD2.1-base noise schedule
(scaled_linear 0.00085..0.012, 1000 steps), so DDIM, CFG and TiUE's timesteps apply unchanged. 10% of
captions are replaced by the empty prompt so classifier-free guidance works. Both stages checkpoint to
`--work` and resume when re-run; the exported weights are the EMA averages.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from examples.fashion.data import CLASSES, TEMPLATES, all_captions, load_split
from examples.fashion.models import components, new_text_encoder, new_unet, save_teacher
from examples.fashion.train_vae import VAEConfig, encode_all, reconstruction_mse, train_vae
from examples.fashion.training import EMA, Log, learning_rate, limit_threads, load_checkpoint, save_checkpoint
from loopfree.images import image_grid
from loopfree.pipeline import TiUEPipeline
from loopfree.presets import SD_SCHEDULER
from loopfree.tokenizer import clip_tokenizer


@dataclass(frozen=True)
class DiffusionConfig:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 5e-4
    warmup: int = 200
    prompt_dropout: float = 0.1
    ema_decay: float = 0.999
    checkpoint_every: int = 100
    seed: int = 0


def caption_ids() -> torch.Tensor:
    """Token ids (len(all_captions()) + 1, 77) of every caption and, last, the empty prompt; padded with "!"
    and without attention mask, exactly as the pipeline encodes prompts."""
    tok = clip_tokenizer("!")
    return tok(all_captions() + [""], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


def draw_captions(labels: torch.Tensor, dropout: float, gen: torch.Generator) -> torch.Tensor:
    """Row of `caption_ids()` for each label: a random template, or the empty prompt with probability `dropout`."""
    rows = labels * len(TEMPLATES) + torch.randint(len(TEMPLATES), labels.shape, generator=gen)
    empty = torch.rand(labels.shape, generator=gen) < dropout
    return torch.where(empty, torch.full_like(rows, len(TEMPLATES) * len(CLASSES)), rows)


def diffusion_loss(unet, text_encoder, ids: torch.Tensor, rows: torch.Tensor, x0: torch.Tensor,
                   alphas: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Epsilon-prediction MSE at t ~ UniformInt[0, 999]. x0: scaled latents (B, 4, 8, 8)."""
    states = text_encoder(ids)[0][rows]  # encode the ~81 distinct captions once, then gather (B, 77, D)
    t = torch.randint(len(alphas), (len(x0),), generator=gen)
    eps = torch.randn(x0.shape, generator=gen)
    a = alphas[t].view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    return (unet(x_t, t, encoder_hidden_states=states).sample - eps).pow(2).mean()


def train_diffusion(latents: tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor, scaling: float,
                    cfg: DiffusionConfig, work: Path, log: Log):
    """Text encoder + UNet on scaled latents; resumes from work/diffusion.pt; returns the EMA modules."""
    torch.manual_seed(cfg.seed)
    unet, text_encoder = new_unet().train(), new_text_encoder().train()
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ema_unet, ema_text = EMA(unet, cfg.ema_decay), EMA(text_encoder, cfg.ema_decay)
    start, spent, mean, std = 0, 0.0, *latents
    state = load_checkpoint(work / "diffusion.pt")
    if state:
        for obj, key in ((unet, "unet"), (text_encoder, "text"), (opt, "opt"), (ema_unet, "ema_unet"), (ema_text, "ema_text")):
            obj.load_state_dict(state[key])
        start, spent = state["step"], state["wall_s"]
    ids, alphas = caption_ids(), DDIMScheduler(**SD_SCHEDULER).alphas_cumprod.float()
    gen, t0, window = torch.Generator().manual_seed(cfg.seed + start), time.perf_counter(), []
    for step in range(start, cfg.steps):
        idx = torch.randint(len(mean), (cfg.batch_size,), generator=gen)
        x0 = scaling * (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen))
        loss = diffusion_loss(unet, text_encoder, ids, draw_captions(labels[idx], cfg.prompt_dropout, gen), x0, alphas, gen)
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg.lr, cfg.warmup)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_unet.update(unet)
        ema_text.update(text_encoder)
        window = (window + [loss.item()])[-100:]  # the loss is noisy (random t): report a running mean
        wall = spent + time.perf_counter() - t0
        if (step + 1) % 50 == 0:
            log(stage="diffusion", step=step + 1, loss=round(sum(window) / len(window), 5), wall_s=round(wall, 1))
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps:
            save_checkpoint(work / "diffusion.pt", {
                "unet": unet.state_dict(), "text": text_encoder.state_dict(), "opt": opt.state_dict(),
                "ema_unet": ema_unet.state_dict(), "ema_text": ema_text.state_dict(), "step": step + 1,
                "wall_s": wall, "loss_mean_last_100": sum(window) / len(window)})
    return ema_unet.shadow, ema_text.shadow


def latent_cache(vae, images: torch.Tensor, work: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Posterior mean/std of all training images and the scaling factor 1 / std(latents), cached in work/."""
    path = work / "latents.pt"
    if not path.exists():
        mean, std = encode_all(vae, images)
        scaling = 1.0 / (mean + std * torch.randn_like(std)).std().item()
        save_checkpoint(path, {"mean": mean, "std": std, "scaling": scaling})
    cached = torch.load(path)
    return cached["mean"], cached["std"], cached["scaling"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("models/fashion-teacher"))
    p.add_argument("--work", type=Path, default=Path("runs/fashion-teacher"), help="checkpoints, logs, latent cache")
    p.add_argument("--vae-steps", type=int, default=VAEConfig.steps)
    p.add_argument("--steps", type=int, default=DiffusionConfig.steps, help="diffusion (text encoder + UNet) steps")
    p.add_argument("--batch-size", type=int, default=DiffusionConfig.batch_size)
    p.add_argument("--limit", type=int, default=None, help="use only the first N training images (quick trials)")
    p.add_argument("--threads", type=int, default=1, help="1: steadier than 2 when other jobs share the cores")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    limit_threads(args.threads)
    log = Log(args.work / "log.jsonl")
    images, labels = load_split("train", args.limit)
    vae_cfg = VAEConfig(steps=args.vae_steps)
    diff_cfg = DiffusionConfig(steps=args.steps, batch_size=args.batch_size)
    vae = train_vae(images, vae_cfg, args.work, log)
    mean, std, scaling = latent_cache(vae, images, args.work)
    vae.register_to_config(scaling_factor=scaling)
    unet, text_encoder = train_diffusion((mean, std), labels, scaling, diff_cfg, args.work, log)
    parts = components(unet, vae, text_encoder)
    save_teacher(parts, args.out)
    summary = {
        "vae": {**asdict(vae_cfg), **_stage_summary(args.work / "vae.pt", "mse"),
                "test_reconstruction_mse": reconstruction_mse(vae, load_split("test", 1000)[0])},
        "diffusion": {**asdict(diff_cfg), **_stage_summary(args.work / "diffusion.pt", "loss_mean_last_100")},
        "scaling_factor": scaling, "train_images": len(images),
        "parameters": {name: sum(p.numel() for p in getattr(parts, name).parameters())
                       for name in ("unet", "vae", "text_encoder")},
    }
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(stage="done", **{k: v for k, v in summary.items() if k != "parameters"})
    _sample_grid(parts, args.work / "teacher_grid.png")


def _stage_summary(path: Path, key: str) -> dict:
    state = load_checkpoint(path)
    return {"wall_s": round(state["wall_s"], 1), "final_" + key: state[key]}


def _sample_grid(parts, path: Path) -> None:
    """A visual check: one prompt per class, 50 DDIM steps with CFG 4.5."""
    pipe = TiUEPipeline.from_components(parts)
    prompts = [all_captions()[c * len(TEMPLATES)] for c in range(10)] * 2
    t0 = time.perf_counter()
    images = pipe.sample_multistep(prompts, num_inference_steps=50, guidance_scale=4.5, seeds=list(range(20)),
                                   batch_size=20).images
    image_grid(images, cols=10).save(path)
    print(f"sample grid {path} ({time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
