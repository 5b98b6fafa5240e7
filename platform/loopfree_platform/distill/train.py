"""Distributed distillation with Ray Train: the worker loop and the driver.

`train_loop_per_worker` is the one training loop of the platform; the maths of an iteration is
`loopfree.training.train_iteration` (docs/method.md, "Training"), here driven by two DeepSpeed engines.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist
from diffusers import UNet2DConditionModel

from loopfree.distiller import Distiller
from loopfree.images import image_grid
from loopfree.memory import peak_gb
from loopfree.pipeline import TiUEPipeline
from loopfree.presets import Components, load_components, load_student_unet, preset
from loopfree.rng import IterationRNG
from loopfree.training import train_iteration
from loopfree_platform import storage
from loopfree_platform.distill import checkpoint
from loopfree_platform.distill.engines import build_engines
from loopfree_platform.distill.evaluation import TrainingEvaluator
from loopfree_platform.distill.job import DistillJob, deepspeed_config
from loopfree_platform.distill.pairs import load_teacher_pairs
from loopfree_platform.distill.steplog import StepLog
from loopfree_platform.models import local_model_dir

LOGGED = ("loss_vsd", "loss_kl", "loss_fake_score", "loss_student", "grad_norm_student", "grad_norm_fake_score", "vsd_g_norm",
          "loss_regression", "loss_sid")  # the last two only with method.regression_weight > 0, method.student_loss sid


class NonFiniteLossError(RuntimeError):
    pass


def build_components(job: DistillJob) -> tuple[Components, UNet2DConditionModel | None]:
    endpoint = job.storage.endpoint_url
    if job.model.preset:
        components = preset(job.model.preset).build(seed=job.model.seed)  # same seed: same weights on every rank
    else:
        components = load_components(local_model_dir(job.model.teacher_dir, endpoint))
    student = load_student_unet(local_model_dir(job.model.student_dir, endpoint)) if job.model.student_dir else None
    if job.deepspeed.gradient_checkpointing:
        (student or components.unet).enable_gradient_checkpointing()
    return components, student


def _mean_over_ranks(logs: dict[str, float]) -> dict[str, float]:
    # NCCL (GPU clusters) reduces CUDA tensors only; gloo reduces CPU ones
    device = "cuda" if dist.is_initialized() and dist.get_backend() == "nccl" else "cpu"
    keys = [k for k in LOGGED if k in logs]  # the same on every rank: they share the method
    values = torch.tensor([logs[k] for k in keys], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return dict(zip(keys, values.cpu().tolist()))


def _rank_batches(shard, job: DistillJob, skip_steps: int, tokenize):
    """The rank's batches: its share of the ordered stream holds only its slice of each global batch
    (corpus.py, "Sharding"), so its s-th batch of b prompts is its slice of global batch s. Consumed steps
    are skipped without tokenising them."""
    b = job.scaling.batch_per_worker
    for i, batch in enumerate(shard.iter_batches(batch_size=b, batch_format="numpy", drop_last=True, prefetch_batches=2)):
        if i >= skip_steps:
            yield {"input_ids": tokenize(list(batch["prompt"]))}


def _write_samples(job: DistillJob, distiller: Distiller, components: Components, step: int) -> None:
    pipe = TiUEPipeline.from_distiller(distiller, components)
    seeds = job.sampling.seeds or list(range(len(job.sampling.prompts)))
    images = pipe(job.sampling.prompts, seeds=seeds, batch_size=len(seeds)).images
    grid = image_grid(images, captions=job.sampling.prompts, min_size=128)  # readable in the MLflow UI
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        grid.save(f.name)
        storage.write_bytes(storage.join(job.run_dir(), "samples", f"step_{step:08d}.png"), Path(f.name).read_bytes(),
                            job.storage.endpoint_url)


def _maybe_inject_fault(job: DistillJob, step: int, rank: int, world: int) -> None:
    """Test-only (training.fail_at_step): the last rank dies once, hard, as a crashed worker would."""
    if job.training.fail_at_step != step or rank != world - 1:
        return
    marker = storage.join(job.run_dir(), "fault_injected")
    if not storage.exists(marker, job.storage.endpoint_url):
        storage.write_bytes(marker, b"1", job.storage.endpoint_url)
        os._exit(13)


def _all_ranks(ok: bool) -> bool:
    flag = torch.tensor([1.0 if ok else 0.0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _resume(latest: ray.train.Checkpoint, distiller, student_engine, fake_score_engine, rank: int) -> checkpoint.TrainState:
    """Load the newest checkpoint every rank can read; a truncated or corrupt latest one falls back to the one
    before it, with a warning. All ranks decide together, so they load the same one."""
    for path in checkpoint.candidates(latest.path, latest.filesystem):
        with ray.train.Checkpoint(path, filesystem=latest.filesystem).as_directory() as d:
            problem = checkpoint.verify(Path(d), rank)
            if _all_ranks(problem is None):
                state = checkpoint.restore(Path(d), distiller, student_engine, fake_score_engine)
                if rank == 0:  # the line an operator looks for after a crash, a lost node or a resubmission
                    print(f"resumed from {path} at step {state.step}", flush=True)
                return state
        if rank == 0 or problem:
            print(f"warning: checkpoint {path} is unusable ({problem or 'on another rank'}); trying the one before",
                  flush=True)
    raise RuntimeError(f"no usable checkpoint beside {latest.path}: delete the run folder to start over")


def train_loop_per_worker(loop_config: dict) -> None:
    t_enter = time.perf_counter()
    job: DistillJob = loop_config["job"]  # validated at load, resolved by the driver (absolute paths, capped steps)
    total_steps = job.training.max_steps
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    b = job.scaling.batch_per_worker

    # 1. models: student, shared teacher/LoRA teacher, frozen text encoder; 2. two DeepSpeed engines
    components, student_unet = build_components(job)
    device = torch.device("cuda", ctx.get_local_rank()) if job.scaling.use_gpu else torch.device("cpu")
    distiller = Distiller(components, job.method, student_unet=student_unet).to(device)
    if job.method.regression_weight > 0:  # DMD's regression loss: the teacher pairs the driver stored with the run
        distiller.set_teacher_pairs(load_teacher_pairs(job))
    student_engine, fake_score_engine = build_engines(distiller, deepspeed_config(job, distiller.config.grad_clip))

    # 3. resume: student, LoRA, both optimizers, EMA, step and data position
    state = checkpoint.TrainState()
    resume_from = ray.train.get_checkpoint()
    if resume_from:
        state = _resume(resume_from, distiller, student_engine, fake_score_engine, rank)
    batches = _rank_batches(ray.train.get_dataset_shard("train"), job, state.step, distiller.tokenize)
    evaluator = TrainingEvaluator(job, device, rank, world) if job.evaluation else None
    upload = checkpoint.uploader(job.run_dir(), job.storage.endpoint_url)  # fails loudly, unlike Ray's default
    executed = StepLog(job.run_dir(), job.storage.endpoint_url, state.step) if rank == 0 else None  # every execution
    if evaluator and state.step == 0 and job.evaluation.at_start:  # the curve's starting point: the initial student
        ray.train.report({"step": 0, **evaluator(TiUEPipeline.from_distiller(distiller, components))})

    nonfinite_in_a_row, t_start, first_step, data_wait, first_batch_s = 0, time.perf_counter(), state.step, 0.0, 0.0
    startup_s = t_start - t_enter  # models, engines, checkpoint restore: the fixed cost of every (re)start
    for step in range(state.step, total_steps):
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in next(batches).items()}
        if step == first_step:  # includes starting the worker's Ray Data pipeline
            first_batch_s = time.perf_counter() - t0
        else:  # steady state: time the trainer waited on the data pipeline
            data_wait += time.perf_counter() - t0
        if rank == 0 and step in job.training.inject_nonfinite_at:  # test only: poison this rank's text states
            batch["text_states"] = torch.full_like(distiller.text_states(batch), math.nan)
        # 4. one iteration: student turn + update, LoRA turn + update, EMA (docs/method.md, "Training", steps 1-6)
        rng = IterationRNG(job.data.seed, step, rank * b, b)
        logs = train_iteration(distiller, student_engine, fake_score_engine, batch, rng, step)
        if executed is not None:  # as soon as the step ran: a fault from here on makes it run again
            executed.append(step + 1, loss_student=logs["loss_student"], loss_fake_score=logs["loss_fake_score"])
        state.step, state.rows_consumed = step + 1, (step + 1) * job.scaling.global_batch_size
        nonfinite_in_a_row = nonfinite_in_a_row + 1 if logs["skipped"] else 0
        state.nonfinite_total += int(logs["skipped"] > 0)
        state.overflow_total += int(logs["overflow"] > 0)  # counted, logged, never a reason to stop
        if nonfinite_in_a_row >= job.training.max_nonfinite_in_a_row:
            raise NonFiniteLossError(f"{nonfinite_in_a_row} non-finite steps in a row at step {step} "
                                     f"(training.max_nonfinite_in_a_row = {job.training.max_nonfinite_in_a_row})")
        _maybe_inject_fault(job, step, rank, world)

        # 5. side effects: sample grids (rank 0), metrics, checkpoints (every rank writes its shard)
        done = step + 1 == total_steps
        if rank == 0 and (done or (step + 1) % job.sampling.every_steps == 0):
            _write_samples(job, distiller, components, step + 1)
        save = done or (step + 1) % job.checkpoint.every_steps == 0
        evaluate = evaluator is not None and evaluator.due(step + 1, total_steps)  # every rank takes part
        eval_metrics = evaluator(TiUEPipeline.from_distiller(distiller, components)) if evaluate else {}
        if save or evaluate or (step + 1) % job.training.log_every == 0:
            step_time = time.perf_counter() - t0
            rate = (step + 1 - first_step) / (time.perf_counter() - t_start)
            metrics = {**_mean_over_ranks(logs), "step": step + 1, "step_time_s": step_time,
                       "samples_per_s": rate * job.scaling.global_batch_size, "eta_s": (total_steps - step - 1) / rate,
                       "lr_student": student_engine.lr(), "lr_fake_score": fake_score_engine.lr(),
                       "peak_memory_gb": peak_gb(device), "skipped_total": state.nonfinite_total,
                       "overflow_total": state.overflow_total,
                       **{k: v for k, v in logs.items() if k.startswith("loss_scale_")},  # fp16 only; equal on all ranks
                       "data_wait_s_per_step": data_wait / max(1, step - first_step), "first_batch_s": first_batch_s,
                       "worker_startup_s": startup_s, **eval_metrics}
            if save:
                state.metrics = metrics
                with tempfile.TemporaryDirectory() as d:
                    checkpoint.save(Path(d), distiller, student_engine, fake_score_engine, state, rank)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                     checkpoint_dir_name=f"checkpoint_{step + 1:08d}", checkpoint_upload_fn=upload)
            else:
                ray.train.report(metrics)

    # 6. export the EMA student as a TiUEPipeline under the run's storage
    if rank == 0:
        with tempfile.TemporaryDirectory() as d:
            TiUEPipeline.from_distiller(distiller, components).save_pretrained(d, safe_serialization=True)
            storage.upload_dir(d, storage.join(job.run_dir(), "export"), job.storage.endpoint_url)
