"""SD2.1-base-shaped distillation steps (random weights) under DeepSpeed ZeRO-2 and ZeRO-3.

Single process, world size 1, the platform's own engines (`loopfree_platform.distill.engines`), loop body
(`loopfree.training.train_iteration`, what every Ray Train worker runs per step), method config and
DeepSpeed config, both generated from the job file (`jobs/distill.yaml` unless --job says otherwise; only
ZeRO stage, batch and --precision are overridden). For each ZeRO stage and each student gradient
checkpointing setting: samples/s, step time (median after a warm-up) split into the student turn (forward
and backward), the fake-score turn(s) and the optimizers + EMA, peak memory, fp16 loss-scale overflows.

    python -m benchmarks.gpu_distill_check --device cuda --batch 8    # the GPU check (gpu_suite.sh)
    python -m benchmarks.gpu_distill_check --device cpu --preset tiny  # the same code path on a CPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
from loopfree_platform.distill.engines import build_engines
from loopfree_platform.distill.job import DistillJob, deepspeed_config
from loopfree_platform.jobfile import overrides, validate_file

from benchmarks.common import machine
from loopfree.distiller import Distiller
from loopfree.memory import peak_gb, reset_peak
from loopfree.presets import preset
from loopfree.rng import IterationRNG
from loopfree.training import train_iteration


def job_for(args, stage: int) -> DistillJob:
    """The job file as the driver would validate it, for one process at this ZeRO stage and batch."""
    sets = {"deepspeed.zero_stage": stage, "scaling.num_workers": 1, "scaling.global_batch_size": args.batch}
    if args.precision:
        sets["deepspeed.precision"] = args.precision
    with overrides(sets):
        return validate_file(args.job, DistillJob)


PHASES = ("student turn", "fake-score turn", "optimizers + EMA")


class PhaseTimer:
    """Wall time per phase of `train_iteration`, by timing the methods it calls on this run's objects
    (synchronising the GPU around each, so a phase's kernels are charged to it)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, dict.fromkeys(PHASES, 0.0)

    def wrap(self, obj, method: str, phase: str) -> None:
        inner = getattr(obj, method)

        def timed(*args, **kwargs):
            sync(self.device)
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            sync(self.device)
            self.seconds[phase] += time.perf_counter() - t0
            return out
        setattr(obj, method, timed)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def one_config(args, stage: int, checkpointing: bool, device: torch.device) -> dict:
    job = job_for(args, stage)
    with device:  # random initialisation on the device: seconds instead of minutes for 865M parameters
        components = preset(args.preset).build(seed=0)
        student = components.unet.__class__.from_config(components.unet.config)
    student.load_state_dict(components.unet.state_dict())
    if checkpointing:
        student.enable_gradient_checkpointing()
    distiller = Distiller(components, job.method, student_unet=student).to(device)
    student_engine, fake_engine = build_engines(distiller, deepspeed_config(job, grad_clip=job.method.grad_clip))
    timer = PhaseTimer(device)
    # Not wrapped: text_states (called again, cached, inside the turns); the text encoder's time is in "other".
    for obj, method, phase in [(distiller, "student_turn", "student turn"),
                               (student_engine, "backward", "student turn"), (distiller, "sample_x0", "fake-score turn"),
                               (distiller, "fake_score_turn", "fake-score turn"), (fake_engine, "backward", "fake-score turn"),
                               (student_engine, "step", "optimizers + EMA"), (fake_engine, "step", "optimizers + EMA"),
                               (distiller, "update_ema", "optimizers + EMA")]:
        timer.wrap(obj, method, phase)
    batch = {"input_ids": distiller.tokenize(["a photo of a cat"] * args.batch).to(device)}
    reset_peak(device)
    times, phases, overflows = [], [], 0
    for step in range(args.steps + 1):
        timer.seconds = dict.fromkeys(PHASES, 0.0)
        sync(device)
        t0 = time.perf_counter()
        logs = train_iteration(distiller, student_engine, fake_engine, batch, IterationRNG(0, step, 0, args.batch), step)
        sync(device)
        times.append(time.perf_counter() - t0)
        phases.append(timer.seconds)
        overflows += int(logs["overflow"] > 0)
    ms = statistics.median(times[1:]) * 1000
    split = {p: statistics.median(x[p] for x in phases[1:]) * 1000 for p in PHASES}
    split["other"] = ms - sum(split.values())  # text encoder, learning-rate updates, Python
    return {"ms": ms, "samples_per_s": args.batch / ms * 1000, "split": split, "gb": peak_gb(device), "overflows": overflows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="sd21_base", choices=["sd21_base", "tiny"])
    ap.add_argument("--job", default="jobs/distill.yaml", help="the job file whose DeepSpeed and method config are used")
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"], help="default: the job's")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--checkpointing", nargs="+", default=["on", "off"], choices=["on", "off"],
                    help="student gradient checkpointing settings to run")
    args = ap.parse_args()
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29511"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    precision = job_for(args, args.stages[0]).deepspeed.precision
    print(f"machine: {machine(device)}; job {args.job}, preset {args.preset}, {precision}, batch {args.batch}")
    print("| ZeRO | grad. checkpointing | samples/s | step (ms) | " + " | ".join(f"{p} (ms)" for p in (*PHASES, "other"))
          + " | peak memory (GB) | fp16 overflows |")
    print("|---|---|---|---|" + "---|" * (len(PHASES) + 1) + "---|---|")
    for stage in args.stages:
        for checkpointing in args.checkpointing:
            r = one_config(args, stage, checkpointing == "on", device)
            print(f"| {stage} | {checkpointing} | {r['samples_per_s']:.2f} | {r['ms']:.0f} | "
                  + " | ".join(f"{r['split'][p]:.0f}" for p in (*PHASES, "other"))
                  + f" | {r['gb']:.2f} | {r['overflows']} of {args.steps + 1} |", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
