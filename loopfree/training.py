"""One distillation iteration, and a single-process loop over it.

`train_iteration` is THE loop body (docs/method.md, "Training", steps numbered as there); the platform's Ray
Train loop calls the same function with DeepSpeed engines in place of `LocalEngine`. An engine is
anything with ``backward(loss)``, ``step() -> {"grad_norm", "skipped"}`` and ``set_lr(lr)``; a DeepSpeed
engine's step may add ``overflow`` (an fp16 loss-scale overflow, not a fault) and ``loss_scale``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Protocol

import torch

from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.optim import adam
from loopfree.rng import IterationRNG


class Engine(Protocol):
    """What the loop needs of an optimizer engine (LocalEngine here, a DeepSpeed adapter on a cluster)."""

    def backward(self, loss: torch.Tensor) -> None: ...
    def step(self) -> dict[str, float]: ...
    def set_lr(self, lr: float) -> None: ...
    def gathered_parameters(self) -> contextlib.AbstractContextManager: ...  # full weights when sharded


class LocalEngine:
    """Single-device stand-in for a DeepSpeed engine: Adam, grad-norm clipping, and a non-finite loss or
    gradient skips the step (a NaN would poison Adam's moments) and is reported as skipped."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float], config: DistillConfig):
        self.params = list(params)
        self.optimizer = adam(self.params, lr, betas, config)
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

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def gathered_parameters(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # one device: parameters are never sharded


def local_engines(distiller: Distiller) -> tuple[LocalEngine, LocalEngine]:
    """The student's engine, and the fake score's, which also trains DMD2's discriminator head when
    config.uses_real_images (GAN term or f-divergence):
    the discriminator loss is part of the fake score's loss (it shares the fake score's encoder, as in DMD2), so
    one backward and one step in the fake-score turn train both, at the fake score's learning rate."""
    cfg = distiller.config
    fake_score = distiller.fake_score_parameters() + distiller.discriminator_parameters()
    return (LocalEngine(distiller.student_parameters(), cfg.student_lr, cfg.student_adam_betas, cfg),
            LocalEngine(fake_score, cfg.fake_score_lr, cfg.fake_score_adam_betas, cfg))


def warmup_lr(base_lr: float, step: int, warmup_steps: int) -> float:
    """Linear warm-up over the first ``warmup_steps`` iterations, then constant: lr * min(1, (step + 1) / W)."""
    return base_lr if warmup_steps <= 0 else base_lr * min(1.0, (step + 1) / warmup_steps)


def train_iteration(distiller: Distiller, student_engine: Engine, fake_score_engine: Engine, batch: dict,
                    rng: IterationRNG, step: int = 0) -> dict[str, float]:
    cfg = distiller.config
    # 0. text states once per iteration, shared by both turns; learning rates of this step (warm-up)
    batch = {**batch, "text_states": distiller.text_states(batch)}
    student_engine.set_lr(warmup_lr(cfg.student_lr, step, cfg.student_warmup_steps))
    fake_score_engine.set_lr(warmup_lr(cfg.fake_score_lr, step, cfg.fake_score_warmup_steps))
    # 1-3. student turn: x0 and eps_all with gradient; VSD (teacher vs fake score, both no-grad) + KL
    turn = distiller.student_turn(batch, rng, step)
    # 4. student update
    student_engine.backward(turn.loss)
    student = student_engine.step()
    # 5. fake-score updates: the first on stopgrad(x0) of this iteration (drawn before the student step, as
    #    in the paper); any further ones (DMD2's two time-scale rule) on fresh samples of the updated student
    fake_skipped, fake_overflow, fake_logs = 0.0, 0.0, {}
    for i in range(cfg.fake_score_updates):
        x0 = turn.x0.detach() if i == 0 else distiller.sample_x0(batch, rng)
        fake_loss, fake_logs = distiller.fake_score_turn(x0, batch, rng, step)
        fake_score_engine.backward(fake_loss)
        fake = fake_score_engine.step()
        fake_skipped += fake["skipped"]
        fake_overflow += fake.get("overflow", 0.0)
    # 6. EMA of the student (on full parameters, gathered if ZeRO-3 shards them)
    with student_engine.gathered_parameters():
        distiller.update_ema()
    logs = {k: float(v) for k, v in {**turn.logs, **fake_logs}.items()}
    return {**logs, "loss_student": float(turn.loss.detach()), "grad_norm_student": student["grad_norm"],
            "grad_norm_fake_score": fake["grad_norm"], "skipped": student["skipped"] + fake_skipped,
            "overflow": student.get("overflow", 0.0) + fake_overflow,
            **({"loss_scale_student": student["loss_scale"]} if "loss_scale" in student else {}),
            **({"loss_scale_fake_score": fake["loss_scale"]} if "loss_scale" in fake else {})}


def cycle_batches(input_ids: torch.Tensor, batch_size: int) -> Iterator[dict]:
    """Endless batches over a fixed (N, 77) token-id tensor, in order (tests and benchmarks)."""
    while True:
        for start in range(0, len(input_ids) - batch_size + 1, batch_size):
            yield {"input_ids": input_ids[start:start + batch_size]}


def distill_local(distiller: Distiller, batches: Iterable[dict], iterations: int, seed: int = 0,
                  engines: tuple[Engine, Engine] | None = None, start_step: int = 0) -> list[dict[str, float]]:
    """Single-process distillation with plain torch optimizers; returns the logs of every iteration."""
    student_engine, fake_score_engine = engines or local_engines(distiller)
    history = []
    for step, batch in zip(range(start_step, start_step + iterations), batches):
        rng = IterationRNG(seed, step, 0, len(batch["input_ids"]))
        history.append(train_iteration(distiller, student_engine, fake_score_engine, batch, rng, step))
    return history
