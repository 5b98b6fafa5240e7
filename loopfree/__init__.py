"""Loopfree: the TiUE method (One-Way Ticket, CVPR 2025) as plain single-device PyTorch.

This package never imports ray, deepspeed, mlflow, boto3 or loopfree_platform (docs/architecture.md).
"""

from loopfree.pipeline import TiUEPipeline, TiUEPipelineOutput
from loopfree.presets import Components, Preset, load_components, preset, sd15, sd21_base, tiny
from loopfree.schedule import DDIMPlan, ddim_plan, ddim_timesteps, one_step_plan
from loopfree.tiue import EncoderFeatures, TiUEGenerator, decode, encode

__all__ = [
    "Components", "DDIMPlan", "EncoderFeatures", "Preset", "TiUEGenerator", "TiUEPipeline", "TiUEPipelineOutput",
    "ddim_plan", "ddim_timesteps", "decode", "encode", "load_components", "one_step_plan", "preset", "sd15",
    "sd21_base", "tiny",
]
