"""One distillation iteration, and a single-process loop over it.

`train_iteration` is THE loop body (SPEC.md section 3, steps numbered as there); the platform's Ray
Train loop calls the same function with DeepSpeed engines in place of `LocalEngine`. An engine is
anything with ``backward(loss)`` and ``step() -> {"grad_norm", "skipped"}``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Protocol

import torch

from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.rng import IterationRNG


class Engine(Protocol):
    """What the loop needs of an optimizer engine (LocalEngine here, a DeepSpeed adapter on a cluster)."""

    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> dict[str, float]: ...
    def gathered_parameters(self) -> contextlib.AbstractContextManager: ...  # full weights when sharded


class LocalEngine:
    """Single-device stand-in for a DeepSpeed engine: Adam, grad-norm clipping, and a non-finite loss or
    gradient skips the step (a NaN would poison Adam's moments) and is reported as skipped."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, config: DistillConfig):
        self.params = list(params)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=config.adam_betas, eps=config.adam_eps,
                                          weight_decay=config.weight_decay)
        self.clip = config.grad_clip
        self._finite_loss = True

    def backward(self, loss: torch.Tensor) -> None:
        self._finite_loss = bool(torch.isfinite(loss.detach()))
        if self._finite_loss:
            loss.backward()

    def step(self) -> dict[str, float]:
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip)) if self._finite_loss else math.nan
        skipped = not math.isfinite(norm)
        if not skipped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": norm, "skipped": float(skipped)}

    def gathered_parameters(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # one device: parameters are never sharded


def local_engines(distiller: Distiller) -> tuple[LocalEngine, LocalEngine]:
    cfg = distiller.config
    return (LocalEngine(distiller.student_parameters(), cfg.student_lr, cfg),
            LocalEngine(distiller.lora_parameters(), cfg.lora_lr, cfg))


def train_iteration(distiller: Distiller, student_engine: Engine, lora_engine: Engine, batch: dict,
                    rng: IterationRNG) -> dict[str, float]:
    # 0. text states once per iteration, shared by both turns
    batch = {**batch, "text_states": distiller.text_states(batch)}
    # 1-3. student turn: x0 and eps_all with gradient; VSD (teacher vs LoRA teacher, both no-grad) + KL
    turn = distiller.student_turn(batch, rng)
    # 4. student update
    student_engine.backward(turn.loss)
    student = student_engine.step()
    # 5. LoRA-teacher update on stopgrad(x0) of this iteration (drawn before the student step)
    lora_loss, lora_logs = distiller.lora_teacher_turn(turn.x0.detach(), batch, rng)
    lora_engine.backward(lora_loss)
    lora = lora_engine.step()
    # 6. EMA of the student (on full parameters, gathered if ZeRO-3 shards them)
    with student_engine.gathered_parameters():
        distiller.update_ema()
    logs = {k: float(v) for k, v in {**turn.logs, **lora_logs}.items()}
    return {**logs, "loss_student": float(turn.loss.detach()), "grad_norm_student": student["grad_norm"],
            "grad_norm_lora": lora["grad_norm"], "skipped": student["skipped"] + lora["skipped"]}


def cycle_batches(input_ids: torch.Tensor, batch_size: int) -> Iterator[dict]:
    """Endless batches over a fixed (N, 77) token-id tensor, in order (tests and benchmarks)."""
    while True:
        for start in range(0, len(input_ids) - batch_size + 1, batch_size):
            yield {"input_ids": input_ids[start:start + batch_size]}


def distill_local(distiller: Distiller, batches: Iterable[dict], iterations: int, seed: int = 0,
                  engines: tuple[Engine, Engine] | None = None, start_step: int = 0) -> list[dict[str, float]]:
    """Single-process distillation with plain torch optimizers; returns the logs of every iteration."""
    student_engine, lora_engine = engines or local_engines(distiller)
    history = []
    for step, batch in zip(range(start_step, start_step + iterations), batches):
        rng = IterationRNG(seed, step, 0, len(batch["input_ids"]))
        history.append(train_iteration(distiller, student_engine, lora_engine, batch, rng))
    return history
