"""DeepSpeed engines for the two trainable networks. The only module that imports deepspeed (docs/architecture.md).

`DeepSpeedEngine` gives a DeepSpeed engine the interface of `loopfree.training.Engine`, so the loop body
(`loopfree.training.train_iteration`) is the same on one CPU and on a GPU cluster.
"""

from __future__ import annotations

import contextlib
import math

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
from deepspeed.runtime.zero.config import ZeroStageEnum
from deepspeed.utils.tensor_fragment import fragment_address

from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.optim import adam

# Resuming never unpickles arbitrary objects from the storage bucket (docs/reliability.md): DeepSpeed's own
# loader calls torch.load(weights_only=False), so whoever could write a checkpoint could run code on every
# worker. Ours loads with weights_only=True: tensors, containers and primitives, plus only these DeepSpeed
# value classes, which its ZeRO checkpoints hold (found by loading every stage/precision this project uses).
SAFE_GLOBALS = [DynamicLossScaler, LossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str, map_location=None):
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True)


class DeepSpeedEngine:
    """backward/step over a DeepSpeed engine; a non-finite loss on ANY rank skips the step on every rank
    (ranks must agree, or ZeRO's collectives would deadlock).

    Two kinds of skipped step are reported apart: `skipped`, a non-finite loss (a real fault, which the job
    stops on when it repeats), and `overflow`, an fp16 loss-scale overflow that DeepSpeed skips while it
    lowers the scale (routine: a fresh fp16 run halves the scale from 2^16 over its first steps)."""

    def __init__(self, module: torch.nn.Module, params: list[torch.nn.Parameter], lr: float, betas: tuple[float, float],
                 config: DistillConfig, ds_config: dict):
        optimizer = adam(params, lr, betas, config)  # the same Adam as on one device (loopfree.training.LocalEngine)
        # DeepSpeed's CPU shared-memory all-reduce op serves only its inference / tensor-parallel path
        # (`inference_all_reduce`); ZeRO training reduces through torch.distributed. Left enabled, the first
        # `init_distributed` on a machine (or in a new install folder) compiles it: about a minute on 2 cores.
        # DeepSpeed keeps this dict in its module so that edits persist.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, config=ds_config)
        self.zero_stage = int(ds_config["zero_optimization"]["stage"])
        self._skip = False

    def backward(self, loss: torch.Tensor) -> None:
        # on the loss's device: NCCL reduces CUDA tensors only, gloo CPU ones
        finite = torch.isfinite(loss.detach()).float().reshape(1)
        if dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        self._skip = finite.item() < 1
        if not self._skip:
            self.engine.backward(loss)

    def step(self) -> dict[str, float]:
        if self._skip:
            self.engine.zero_grad()
            return {"grad_norm": math.nan, "skipped": 1.0, "overflow": 0.0, **self._loss_scale()}
        overflows_before = self.engine.skipped_steps  # fp16 loss-scale overflows skip inside DeepSpeed
        # Without ZeRO, DeepSpeed does not always record the global norm (None after a resume): the
        # gradients are whole and already averaged on every rank, so measure the pre-clip norm here.
        own_norm = self._grad_norm() if self.zero_stage == 0 else None
        self.engine.step()
        norm = own_norm if own_norm is not None else self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else math.nan
        overflow = float(self.engine.skipped_steps > overflows_before)
        return {"grad_norm": norm, "skipped": 0.0, "overflow": overflow, **self._loss_scale()}

    def _loss_scale(self) -> dict[str, float]:
        """The current dynamic loss scale under fp16 (DeepSpeed's wrapped optimizers expose it); none otherwise."""
        scale = getattr(self.engine.optimizer, "loss_scale", None) if self.engine.fp16_enabled() else None
        return {"loss_scale": float(scale)} if scale is not None else {}

    def _grad_norm(self) -> float:
        grads = [p.grad.detach().float() for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) if grads else math.nan

    def gathered_parameters(self) -> contextlib.AbstractContextManager:
        """Full parameters on every rank for reading (EMA, export): a no-op unless ZeRO-3 shards them."""
        if self.zero_stage < 3:
            return contextlib.nullcontext()
        return deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), modifier_rank=None)

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def save(self, directory: str) -> None:
        self.engine.save_checkpoint(directory, tag="state")  # collective: every rank writes its shard

    def load(self, directory: str) -> None:
        self.engine.checkpoint_engine.load = safe_load  # every DeepSpeed checkpoint read goes through it
        path, _ = self.engine.load_checkpoint(directory, tag="state", load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed found no checkpoint in {directory}")


def build_engines(distiller: Distiller, ds_config: dict) -> tuple[DeepSpeedEngine, DeepSpeedEngine]:
    """Two engines, two optimizers: the student generator, and the fake score (the shared UNet whose only
    trainable parameters are the LoRA weights, or a full trainable copy of the teacher)."""
    cfg = distiller.config
    student = DeepSpeedEngine(distiller.student, distiller.student_parameters(), cfg.student_lr, cfg.student_adam_betas,
                              cfg, ds_config)
    fake_score = DeepSpeedEngine(distiller.fake_score, distiller.fake_score_parameters(), cfg.fake_score_lr,
                                 cfg.fake_score_adam_betas, cfg, ds_config)
    return student, fake_score
