"""Loopfree: the TiUE method (One-Way Ticket, CVPR 2025) as plain single-device PyTorch.

This package never imports ray, deepspeed, mlflow, boto3 or loopfree_platform (docs/architecture.md).

The names below are loaded on first use, so that `import loopfree.config` (a job's validation, the platform's
driver, its data tasks) does not pay for torch and diffusers: about 5.6 s of imports on 2 cores, more in a
process that has to compile them first.
"""

import importlib

_EXPORTS = {
    "loopfree.pipeline": ("TiUEPipeline", "TiUEPipelineOutput"),
    "loopfree.presets": ("Components", "Preset", "load_components", "preset", "sd15", "sd21_base", "tiny"),
    "loopfree.schedule": ("DDIMPlan", "ddim_plan", "ddim_timesteps", "one_step_plan"),
    "loopfree.tiue": ("EncoderFeatures", "TiUEGenerator", "decode", "encode"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'loopfree' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
