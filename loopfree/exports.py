"""Where a distilled student's weights lie in a folder. Plain paths, no torch or diffusers, so a job's validation
can check a `model.student_dir` before anything heavy is imported."""

from __future__ import annotations

from pathlib import Path


def student_unet_dir(directory: str | Path) -> Path:
    """The UNet folder of a student to start distillation from (K transfer, docs/method.md): an exported
    pipeline's `unet/`, or a UNet directory itself. The UNet carries no K, so a K = 4 student can start a
    K = 2 or K = 8 one."""
    root = Path(directory)
    unet_dir = root / "unet" if (root / "unet").is_dir() else root
    if not (unet_dir / "config.json").is_file():
        raise ValueError(f"{root} is neither a pipeline directory with unet/ nor a UNet directory (no config.json)")
    return unet_dir
