"""A study run's checkpoint (benchmarks/fashion/study.py): a run stopped midway resumes from its last evaluation.

Saved after every evaluation, beside the run's export (runs/fashion-study/RUN/checkpoint.pt): the distiller's state
(student, its EMA, fake score, discriminator head), both optimizers' states, the update count and the training time
so far. Nothing random needs saving: every draw of update s comes from IterationRNG(seed, s, ...) and the batches
from (seed, epoch), so a resumed run trains what the uninterrupted run would have (docs/method.md, "Randomness").
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

NAME = "checkpoint.pt"


def save(path: Path, step: int, train_s: float, distiller, engines) -> None:
    """Written to a temporary file and renamed: a run killed while saving keeps its previous checkpoint."""
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save({"step": step, "train_s": train_s, "distiller": distiller.state_dict(),
                "optimizers": [engine.optimizer.state_dict() for engine in engines]}, partial)
    partial.replace(path)


def load(path: Path) -> dict | None:
    return torch.load(path, weights_only=True) if path.is_file() else None


def resume_step(rows: list[dict], state: dict | None) -> int:
    """The update a run goes on from: its checkpoint's, when the run's record holds the evaluation made there (the
    record is written before the checkpoint, so a run killed in between has a later row, dropped on resume);
    0 (start over) without a checkpoint or a matching row."""
    if state is None or not any(row["step"] == state["step"] for row in rows):
        return 0
    return state["step"]


def restore(state: dict, distiller, engines) -> float:
    """Loads a checkpoint into a freshly built distiller and its engines; returns the training time so far."""
    distiller.load_state_dict(state["distiller"])
    for engine, optimizer in zip(engines, state["optimizers"], strict=True):
        engine.optimizer.load_state_dict(optimizer)
    return state["train_s"]
