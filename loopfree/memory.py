"""Peak memory of a process region: CUDA's peak allocation on a GPU, the peak resident set on a CPU.

The training loop logs it per step (`peak_memory_gb`) and the benchmarks report it per row, one probe for both.
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import torch


def reset_peak(device: torch.device) -> None:
    """Start a new peak: CUDA's counter, or on Linux the kernel's peak-RSS counter (VmHWM) after giving freed
    heap back to the OS."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def peak_gb(device: torch.device) -> float:
    """GiB: CUDA's peak allocated memory, or the process's peak resident set (VmHWM; NaN off Linux), since the
    process started or the last `reset_peak`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    status = Path("/proc/self/status")
    lines = status.read_text().splitlines() if status.is_file() else []
    kb = next((int(line.split()[1]) for line in lines if line.startswith("VmHWM:")), None)
    return math.nan if kb is None else kb / 2**20
