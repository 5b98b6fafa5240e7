"""The text-to-image systems the paper's tables compare, behind one call: (prompts, seeds) -> uint8 images.

Kinds (the rows of the paper's Table 1, docs/method.md):
- "tiue": a TiUE pipeline directory (also the 1-step SwiftBrush mode, whatever the directory's config says);
- "teacher": a diffusers-layout model run for N DDIM steps with classifier-free guidance s
  (the "SD2.1, 50 steps, cfg 7.5" row), through `TiUEPipeline.sample_multistep`;
- "diffusers": any diffusers text-to-image pipeline directory (SD-Turbo, LCM, InstaFlow, ...), called
  with its own defaults plus steps and guidance.
A folder of images generated elsewhere (GigaGAN) needs no generator; the evaluation job reads it.
`preset` builds random-initialised tiny/SD components instead of loading a directory (tests, smoke runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from loopfree.features import to_uint8

KINDS = ("tiue", "teacher", "diffusers")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

Generate = Callable[[Sequence[str], Sequence[int]], torch.Tensor]  # -> uint8 (B, 3, H, W)


@dataclass(frozen=True)
class SystemConfig:
    kind: str
    model_dir: str | None = None
    preset: str | None = None
    seed: int = 0  # weights seed of a preset
    num_inference_steps: int | None = None  # teacher: default 50; diffusers: the pipeline's default
    guidance_scale: float | None = None  # teacher: default 7.5; diffusers: the pipeline's default
    dtype: str = "fp32"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if (self.model_dir is None) == (self.preset is None) or (self.kind == "diffusers" and self.preset):
            raise ValueError(f"kind {self.kind!r}: set exactly one of model_dir and preset (diffusers: model_dir only)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")


def _components(cfg: SystemConfig):
    from loopfree.presets import load_components, preset

    return preset(cfg.preset).build(seed=cfg.seed) if cfg.preset else load_components(cfg.model_dir)


def _tiue_pipeline(cfg: SystemConfig):
    from loopfree.pipeline import TiUEPipeline

    if cfg.preset:
        return TiUEPipeline.from_components(_components(cfg))
    return TiUEPipeline.from_pretrained(cfg.model_dir)


def steps_label(cfg: SystemConfig) -> str:
    """The paper's "steps" column: "1 enc + 4 dec" for TiUE, "1" for the 1-step mode, else N."""
    if cfg.kind == "tiue":
        saved = {}  # a saved TiUE pipeline records its K and mode in model_index.json
        if cfg.model_dir and (Path(cfg.model_dir) / "model_index.json").is_file():
            saved = json.loads((Path(cfg.model_dir) / "model_index.json").read_text())
        return "1" if saved.get("mode") == "one_step" else f"1 enc + {saved.get('num_steps', 4)} dec"
    if cfg.kind == "teacher":
        return str(cfg.num_inference_steps or 50)
    return str(cfg.num_inference_steps) if cfg.num_inference_steps else "default"


def load_system(cfg: SystemConfig, device: str | torch.device = "cpu", batch_size: int = 8) -> tuple[Generate, str]:
    """Load a system once; returns (generate, steps label). generate(prompts, seeds) -> uint8 (B, 3, H, W),
    one seed per prompt (each image depends only on its own seed)."""
    dtype = DTYPES[cfg.dtype]
    if cfg.kind == "diffusers":
        return _diffusers(cfg, device, dtype), steps_label(cfg)
    if cfg.kind == "teacher":
        from loopfree.pipeline import TiUEPipeline

        pipe = _to(TiUEPipeline.from_components(_components(cfg)), device, dtype)
        steps, scale = cfg.num_inference_steps or 50, 7.5 if cfg.guidance_scale is None else cfg.guidance_scale
        pipe.set_progress_bar_config(disable=True)
        return (lambda p, s: to_uint8(pipe.sample_multistep(list(p), steps, scale, seeds=list(s), batch_size=batch_size,
                                                            output_type="np").images)), steps_label(cfg)
    pipe = _to(_tiue_pipeline(cfg), device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return (lambda p, s: to_uint8(pipe(list(p), seeds=list(s), batch_size=batch_size, output_type="np").images)), \
        steps_label(cfg)


def _to(pipe, device, dtype):
    # Casting to the dtype the weights already have only makes diffusers warn; skip it for fp32.
    return pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)


def _diffusers(cfg: SystemConfig, device, dtype) -> Generate:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(cfg.model_dir, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    kwargs = {k: v for k, v in (("num_inference_steps", cfg.num_inference_steps), ("guidance_scale", cfg.guidance_scale))
              if v is not None}

    def generate(prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(int(s)) for s in seeds]  # CPU generators: device-independent noise
        return to_uint8(pipe(prompt=list(prompts), generator=generators, output_type="np", **kwargs).images)

    return generate
