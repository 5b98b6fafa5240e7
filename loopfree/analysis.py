"""The paper's motivation analysis: how much UNet encoder and decoder features change between adjacent
sampling steps of the multi-step teacher.

TiUE reuses one encoder pass for all decoder timesteps because encoder features barely change from one
sampling step to the next while decoder features do (the paper's motivation figure; the same observation
as Li et al. 2023, "Faster Diffusion: Rethinking the Role of UNet Encoder in Diffusion Models").
We run the teacher's own DDIM + CFG sampler and read, through forward hooks (a side concern; the UNet's
forward is untouched), the encoder output (mid block) and the decoder's last feature map (last up block,
before the output norm) of the conditional branch at every step. For step i >= 2 the row holds the
cosine similarity of each to its value at step i - 1, per image over all C*H*W elements, averaged over
images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from loopfree.pipeline import TiUEPipeline


@dataclass(frozen=True)
class StepSimilarity:
    step: int  # 1-based sampling step (the first row is step 2: similarity to step 1)
    timestep: int
    encoder_cosine: float
    decoder_cosine: float


class _AdjacentCosine:
    """Forward hook: cosine similarity of a module's conditional-branch output to the previous call's."""

    def __init__(self, batch: int):
        self.batch, self.previous, self.values = batch, None, []

    def __call__(self, module, inputs, output) -> None:
        x = output[0] if isinstance(output, tuple) else output
        x = x[-self.batch:].float().flatten(1)  # CFG batches are [uncond; cond]: keep cond, (B, C*H*W)
        if self.previous is not None:
            self.values.append(F.cosine_similarity(x, self.previous, dim=1).mean().item())
        self.previous = x


@torch.no_grad()
def adjacent_step_similarity(pipe: TiUEPipeline, prompts: Sequence[str], seeds: Sequence[int], num_steps: int = 50,
                             guidance_scale: float = 7.5) -> list[StepSimilarity]:
    """Rows for steps 2..num_steps of one teacher sampling run over all prompts at once (one batch)."""
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 to compare adjacent steps, got {num_steps}")
    unet = pipe.unet
    encoder, decoder = _AdjacentCosine(len(prompts)), _AdjacentCosine(len(prompts))
    hooks = [unet.mid_block.register_forward_hook(encoder), unet.up_blocks[-1].register_forward_hook(decoder)]
    try:
        pipe.sample_multistep(list(prompts), num_steps, guidance_scale, seeds=list(seeds), batch_size=len(prompts),
                              output_type="latent")
    finally:
        for h in hooks:
            h.remove()
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    return [StepSimilarity(i + 2, timesteps[i + 1], e, d) for i, (e, d) in enumerate(zip(encoder.values, decoder.values))]
