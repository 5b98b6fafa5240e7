"""Helpers shared by the benchmark scripts: machine description, report files (peak memory: loopfree.memory)."""

from __future__ import annotations

import platform
from pathlib import Path

import diffusers
import torch


def machine(device: torch.device) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "CPU")
    return (f"{platform.machine()}, {torch.get_num_threads()} threads, {name}; torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}, Python {platform.python_version()}")


def write_report(out: str | Path, lines: list[str]) -> int:
    """Write a results table (Markdown lines) to `out`, print it, and return the exit status 0."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0
