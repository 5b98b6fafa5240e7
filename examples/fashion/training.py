"""Helpers shared by the Fashion-MNIST training scripts: thread limits, resumable checkpoints, EMA, logs."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

# The recipes share a small CPU machine with other work (docs/architecture.md): never take more than 2 threads.
MAX_THREADS = 2


def limit_threads(threads: int = MAX_THREADS) -> None:
    torch.set_num_threads(max(1, min(threads, MAX_THREADS, os.cpu_count() or 1)))


class EMA:
    """Exponential moving average of a module's parameters, decay min((1 + s) / (10 + s), max_decay):
    the ramp lets early averages forget the random initialisation quickly."""

    def __init__(self, module: nn.Module, max_decay: float):
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)
        self.max_decay, self.steps = max_decay, 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.steps += 1
        decay = min((1 + self.steps) / (10 + self.steps), self.max_decay)
        for avg, p in zip(self.shadow.parameters(), module.parameters()):
            avg.lerp_(p.detach(), 1 - decay)
        for avg, b in zip(self.shadow.buffers(), module.buffers()):
            avg.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.steps = state["steps"]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so a crash mid-write never leaves a corrupt checkpoint behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


class Log:
    """Appends one JSON line per record to a file and echoes it, so a background run can be polled."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.t0 = time.perf_counter()

    def __call__(self, **record: Any) -> None:
        record = {"elapsed_s": round(time.perf_counter() - self.t0, 1), **record}
        line = json.dumps(record)
        print(line, flush=True)
        with self.path.open("a") as f:
            f.write(line + "\n")


def learning_rate(step: int, base: float, warmup: int) -> float:
    """Linear warm-up, then constant (the EMA does the averaging a decay would otherwise do)."""
    return base * min(1.0, (step + 1) / max(1, warmup))
