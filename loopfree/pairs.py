"""Teacher pairs for DMD's regression loss (docs/method.md, "Keeping the teacher's diversity").

A pair is (z, prompt) -> x0_teacher: the teacher's deterministic multi-step DDIM sample (eta = 0, with CFG)
started from the noise z. The student is later asked for its own x0 from the same z and prompt, and pulled
towards x0_teacher, which anchors its noise-to-image map to the teacher's modes. The pairs are made once
per run, before training, and stored with it; they hold no training image.

Shapes: noise and x0 are (P, C, H, W) latents (x0 before the VAE's scaling is undone, as the student's x0);
input_ids is (P, 77).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

PAIR_SEED_OFFSET = 1 << 40  # pair seeds never meet evaluation or sampling seeds, which count from 0


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
    return [PAIR_SEED_OFFSET + i for i in range(first, first + count)]


@torch.no_grad()
def make_teacher_pairs(pipe, prompts: list[str], seeds: list[int], num_inference_steps: int, guidance_scale: float,
                       batch_size: int = 64) -> TeacherPairs:
    """The teacher's samples for these prompts and seeds. `pipe` is a TiUEPipeline over the TEACHER's UNet;
    its per-seed noise (`prepare_latents`) is the z the student will be given."""
    noise = pipe.prepare_latents(seeds).cpu()  # (P, C, H, W)
    x0 = pipe.sample_multistep(prompts, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                               seeds=seeds, batch_size=batch_size, output_type="latent").images.float().cpu()
    input_ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                               truncation=True, return_tensors="pt").input_ids
    return TeacherPairs(noise, x0, input_ids)
