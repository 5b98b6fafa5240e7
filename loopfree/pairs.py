"""Teacher pairs for DMD's regression loss (docs/method.md, "Keeping the teacher's diversity").

A pair is (z, prompt) -> x0_teacher: the teacher's deterministic multi-step DDIM sample (eta = 0, with CFG)
started from the noise z. The student is later asked for its own x0 from the same z and prompt, and pulled
towards x0_teacher, which anchors its noise-to-image map to the teacher's modes. The pairs are made once
per run, before training, and stored with it; they hold no training image.

With `regression_finish_from` t, a pair's target is instead the INITIAL STUDENT's sample from z, noised to the first
timestep <= t of the teacher's schedule and finished by the teacher from there (SDEdit, Meng et al., ICLR 2022):
the student's own layout from z with the teacher's finish. The noise that re-noises it is z mirrored left to
right (`regression_renoise: mirrored_z`), so the target is a function of (z, prompt) alone while its elements are
independent of z's, or the pair's own draw (`fresh`): garments are near-symmetric, so mirrored z still echoes the
layout the student drew from z, and a fresh draw lets the teacher's finish move further from it (docs/method.md,
"DMD's regression on the student's own finished samples").

Shapes: noise and x0 are (P, C, H, W) latents (x0 before the VAE's scaling is undone, as the student's x0);
input_ids is (P, 77).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from safetensors.torch import load_file, save_file

from loopfree.config import RENOISE

# torch's CPU generator keeps only a seed's low 32 bits (seeds s and s + 2**32 draw the same noise; loopfree.seeds),
# so the offsets stay below 2**32: pair seeds are 2**31 + i, above the seeds evaluation and sampling use (counted from 0, drawn
# below 2**31), and a fresh re-noise draw's seed is its pair's seed + 2**30, met by no other.
PAIR_SEED_OFFSET = 1 << 31
RENOISE_SEED_OFFSET = 1 << 30
MAX_PAIRS = 1 << 30


@dataclass(frozen=True)
class TeacherPairs:
    noise: torch.Tensor  # (P, C, H, W)
    x0: torch.Tensor  # (P, C, H, W)
    input_ids: torch.Tensor  # (P, 77)

    def __post_init__(self):
        sizes = {len(self.noise), len(self.x0), len(self.input_ids)}
        if len(sizes) != 1 or self.noise.shape != self.x0.shape:
            raise ValueError(f"teacher pairs disagree: noise {tuple(self.noise.shape)}, x0 {tuple(self.x0.shape)}, "
                             f"input_ids {tuple(self.input_ids.shape)}")

    def __len__(self) -> int:
        return len(self.noise)

    def save(self, path: str | Path) -> None:
        save_file({"noise": self.noise.contiguous(), "x0": self.x0.contiguous(), "input_ids": self.input_ids.contiguous()},
                  str(path))

    @classmethod
    def load(cls, path: str | Path) -> "TeacherPairs":
        tensors = load_file(str(path))
        return cls(tensors["noise"], tensors["x0"], tensors["input_ids"])

    @classmethod
    def concat(cls, parts: list["TeacherPairs"]) -> "TeacherPairs":
        return cls(*(torch.cat([getattr(p, k) for p in parts]) for k in ("noise", "x0", "input_ids")))


def pair_seeds(first: int, count: int) -> list[int]:
    """Seeds of pairs first .. first + count - 1 (a stable numbering, so any split of the work agrees)."""
    if first < 0 or first + count > MAX_PAIRS:
        raise ValueError(f"pairs {first} .. {first + count - 1} are outside 0 .. {MAX_PAIRS - 1}")
    return [PAIR_SEED_OFFSET + i for i in range(first, first + count)]


@torch.no_grad()
def make_teacher_pairs(pipe, prompts: list[str], seeds: list[int], num_inference_steps: int, guidance_scale: float,
                       batch_size: int = 64) -> TeacherPairs:
    """The teacher's samples for these prompts and seeds. `pipe` is a TiUEPipeline over the TEACHER's UNet;
    its per-seed noise (`prepare_latents`) is the z the student will be given."""
    noise = pipe.prepare_latents(seeds).cpu()  # (P, C, H, W)
    x0 = pipe.sample_multistep(prompts, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                               seeds=seeds, batch_size=batch_size, output_type="latent").images.float().cpu()
    return TeacherPairs(noise, x0, _input_ids(pipe, prompts))


def _input_ids(pipe, prompts: list[str]) -> torch.Tensor:
    return pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids  # (P, 77)


@torch.no_grad()
def make_refined_pairs(student, teacher, prompts: list[str], seeds: list[int], finish_from: int,
                       num_inference_steps: int, guidance_scale: float, batch_size: int = 64,
                       renoise: str = "mirrored_z") -> TeacherPairs:
    """Pairs (z, prompt) -> the student's sample from z, finished by the teacher. `student` is a TiUEPipeline
    over the initial student, `teacher` one over the teacher's UNet; both draw z from the same seeds.

    1. x0_student = student(z, c), one TiUE pass.
    2. x_t = sqrt(alpha_bar_t) x0_student + sqrt(1 - alpha_bar_t) n, t the first timestep <= finish_from of the
       teacher's num_inference_steps-step DDIM schedule; n = flip(z), or with renoise "fresh" the noise of seed
       + RENOISE_SEED_OFFSET.
    3. x0 = the teacher's DDIM with CFG from x_t down to the end of that schedule.
    """
    if renoise not in RENOISE:
        raise ValueError(f"renoise must be one of {', '.join(RENOISE)}, got {renoise!r}")
    scheduler = DDIMScheduler.from_config(teacher.scheduler.config)
    scheduler.set_timesteps(num_inference_steps)
    t = int(scheduler.timesteps[scheduler.timesteps <= finish_from][0])
    alpha_bar_t = scheduler.alphas_cumprod[t]
    noise = teacher.prepare_latents(seeds)  # (P, C, H, W): the z of every pair
    renoised = noise.flip(-1) if renoise == "mirrored_z" else \
        teacher.prepare_latents([s + RENOISE_SEED_OFFSET for s in seeds])  # (P, C, H, W)
    x0 = []
    for i in range(0, len(prompts), batch_size):
        chunk = slice(i, i + batch_size)
        sample = student(prompts[chunk], seeds=seeds[chunk], batch_size=batch_size, output_type="latent").images
        x_t = alpha_bar_t.sqrt() * sample + (1 - alpha_bar_t).sqrt() * renoised[chunk]  # (b, C, H, W)
        text = teacher.encode_prompt(prompts[chunk]).to(teacher.unet.dtype)
        x0.append(teacher.denoise(x_t, text, scheduler, guidance_scale, t).float().cpu())
    return TeacherPairs(noise.cpu(), torch.cat(x0), _input_ids(teacher, prompts))
