"""TiUEPipeline: prompts -> images with a TiUE (or 1-step) student, plus the teacher's DDIM+CFG sampler.

Inference uses no classifier-free guidance for the student (it is distilled in, docs/method.md).
The multi-step sampler (`sample_multistep`) runs the same components as a plain SD sampler, so the
"teacher, N steps, cfg s" rows of the paper's tables come from the same code path.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.utils import BaseOutput
from transformers import CLIPTextModel, CLIPTokenizer

from loopfree.presets import Components
from loopfree.schedule import DDIMPlan, plan_for
from loopfree.seeds import SEED_RANGE, is_seed
from loopfree.tiue import TiUEGenerator

if TYPE_CHECKING:  # only for the annotation: serving a pipeline needs neither peft nor the losses the Distiller imports
    from loopfree.config import DistillConfig
    from loopfree.distiller import Distiller

OUTPUT_TYPES = ("pil", "np", "latent")


@dataclass
class TiUEPipelineOutput(BaseOutput):
    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor  # pil list, (N, H, W, 3) in [0, 1], or latents
    seeds: list[int]


def build_plan(scheduler: DDIMScheduler, mode: str, num_steps: int, spacing: str, timesteps: Sequence[int] | None):
    """The DDIM plan of a pipeline configuration, on its scheduler's noise schedule (see `plan_for`)."""
    return plan_for(scheduler.alphas_cumprod, mode, num_steps, spacing, timesteps, scheduler.config.steps_offset)


class TiUEPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->unet->vae"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler,
        num_steps: int = 4,
        spacing: str = "leading",
        timesteps: list[int] | None = None,
        mode: str = "tiue",
    ):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        plan = build_plan(scheduler, mode, num_steps, spacing, timesteps)
        TiUEGenerator(unet, plan, mode)  # validates the UNet now rather than at the first call
        # The resolved timesteps are stored so a saved pipeline says exactly what it runs.
        self.register_to_config(num_steps=plan.num_steps, spacing=spacing, timesteps=list(plan.timesteps), mode=mode)

    @property
    def plan(self) -> DDIMPlan:
        return build_plan(self.scheduler, self.config.mode, self.config.num_steps, self.config.spacing, self.config.timesteps)

    @property
    def student(self) -> TiUEGenerator:
        """The generator over the pipeline's current UNet (cheap to build; never stale after a swap)."""
        return TiUEGenerator(self.unet, self.plan, self.config.mode)

    @classmethod
    def from_components(cls, components: Components, **kwargs) -> "TiUEPipeline":
        return cls(components.unet, components.vae, components.text_encoder, components.tokenizer,
                   components.scheduler, **kwargs)

    @classmethod
    def for_method(cls, components: Components, config: DistillConfig, unet: UNet2DConditionModel | None = None):
        """A student on a method's plan (its K, spacing and custom timesteps) with the teacher's VAE, text encoder,
        tokenizer and scheduler: `unet`, or by default the teacher's own UNet (the initial student)."""
        plan = build_plan(components.scheduler, config.mode, config.num_steps, config.spacing, config.timesteps)
        return cls(components.unet if unet is None else unet, components.vae, components.text_encoder,
                   components.tokenizer, components.scheduler, num_steps=plan.num_steps, mode=config.mode,
                   spacing=config.spacing if config.mode == "tiue" else "leading",
                   timesteps=list(plan.timesteps) if config.spacing == "custom" else None)

    @classmethod
    def from_distiller(cls, distiller: Distiller, components: Components) -> "TiUEPipeline":
        """The exported student: the Distiller's EMA student UNet with the teacher's VAE, text encoder,
        tokenizer and scheduler, on the student's own plan (its K, spacing and custom timesteps)."""
        parts = dataclasses.replace(components, text_encoder=distiller.text_encoder, tokenizer=distiller.tokenizer)
        return cls.for_method(parts, distiller.config, distiller.export_unet())

    # -- shared steps -------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        """prompts -> text states (B, 77, D) from the frozen text encoder (padded/truncated to 77)."""
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.text_encoder.device))[0]

    def prepare_latents(self, seeds: list[int]) -> torch.Tensor:
        """One CPU generator per seed, so an image depends only on its own seed, not on batching."""
        shape = (self.unet.config.in_channels, self.unet.config.sample_size, self.unet.config.sample_size)
        z = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(z).to(self.unet.device, self.unet.dtype)  # (B, C, H, W)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) -> images (B, 3, H, W) in [0, 1]."""
        x = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return (x.float() / 2 + 0.5).clamp(0, 1)

    # -- samplers -----------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], seeds: int | list[int] | None = None, batch_size: int = 8,
                 output_type: str = "pil", return_dict: bool = True):
        """TiUE generation: one encoder pass + one batched decoder pass per batch of prompts, no CFG."""
        student = self.student
        return self._run(prompt, seeds, batch_size, output_type, return_dict,
                         lambda z, text: student(z, text)[0])

    @torch.no_grad()
    def sample_multistep(self, prompt: str | list[str], num_inference_steps: int = 50, guidance_scale: float = 7.5,
                         seeds: int | list[int] | None = None, batch_size: int = 8, output_type: str = "pil",
                         return_dict: bool = True):
        """The teacher baseline: multi-step DDIM (eta 0) with classifier-free guidance on this UNet."""
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps)
        return self._run(prompt, seeds, batch_size, output_type, return_dict,
                         lambda z, text: self.denoise(z, text, scheduler, guidance_scale))

    @torch.no_grad()
    def denoise(self, z: torch.Tensor, text: torch.Tensor, scheduler: DDIMScheduler, guidance_scale: float,
                t_start: int | None = None) -> torch.Tensor:
        """DDIM (eta 0) with classifier-free guidance over the scheduler's timesteps: from pure noise z, or with
        t_start from a sample already noised to the first timestep <= t_start (SDEdit's finish, Meng et al.,
        ICLR 2022). z (B, C, H, W), text (B, 77, D) -> latents (B, C, H, W)."""
        timesteps = scheduler.timesteps if t_start is None else scheduler.timesteps[scheduler.timesteps <= t_start]
        uncond = self.encode_prompt([""] * z.shape[0]) if guidance_scale != 1.0 else None
        for t in timesteps:
            if uncond is None:
                eps = self.unet(z, t, encoder_hidden_states=text).sample
            else:  # one UNet call on [uncond; cond], as diffusers' SD pipelines do
                e_u, e_c = self.unet(z.repeat(2, 1, 1, 1), t, encoder_hidden_states=torch.cat([uncond, text])).sample.chunk(2)
                eps = e_u + guidance_scale * (e_c - e_u)
            z = scheduler.step(eps, t, z).prev_sample
        return z

    def _run(self, prompt, seeds, batch_size, output_type, return_dict, sample_fn):
        prompts, seeds = _check_request(prompt, seeds, batch_size, output_type)
        outputs = []
        for start in self.progress_bar(range(0, len(prompts), batch_size)):
            chunk = slice(start, start + batch_size)
            text = self.encode_prompt(prompts[chunk]).to(self.unet.dtype)
            latents = sample_fn(self.prepare_latents(seeds[chunk]), text)
            outputs.append(latents if output_type == "latent" else self.decode_latents(latents).cpu())
        images = torch.cat(outputs)
        if output_type != "latent":
            images = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
            if output_type == "pil":
                images = [PIL.Image.fromarray((im * 255).round().astype(np.uint8)) for im in images]
        return TiUEPipelineOutput(images=images, seeds=seeds) if return_dict else (images, seeds)


def _check_request(prompt, seeds, batch_size, output_type) -> tuple[list[str], list[int]]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompt must be a string or a non-empty list of strings")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if seeds is None:  # fresh random seeds, returned so every image can be reproduced
        seeds = [random.SystemRandom().randrange(2**31) for _ in prompts]
    seeds = [seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds must hold one seed per prompt ({len(prompts)}), got {len(seeds)}")
    for s in seeds:  # 0 is a valid seed, never "random"
        if not is_seed(s):
            raise ValueError(f"seeds must be integers in {SEED_RANGE}, got {s!r}")
    return prompts, seeds

