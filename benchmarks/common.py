"""Helpers shared by the benchmark scripts: peak memory of a code region, machine description."""

from __future__ import annotations

import ctypes
import platform
from pathlib import Path

import diffusers
import torch


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:  # give freed heap back to the OS, then reset the kernel's peak-RSS counter (VmHWM)
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")


def peak_gb(device: torch.device) -> float:
    """CUDA: peak allocated since reset_peak; CPU: peak resident set of the process since reset_peak."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return _status_kb("VmHWM") / 2**20


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


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
