"""One SD2.1-base-shaped distillation step (random weights) under DeepSpeed ZeRO-2 and ZeRO-3.

Single process, world size 1, the platform's own engines (`loopfree_platform.distill.engines`), loop body
(`loopfree.training.train_iteration`), method config and DeepSpeed config, both generated from the job file
(`jobs/distill.yaml` unless --job says otherwise; only ZeRO stage, batch and --precision are overridden).
Prints step time (median after a warm-up), peak memory, and fp16 loss-scale overflows.

    python -m benchmarks.gpu_distill_check --device cuda              # the GPU check (gpu_distill_check.sh)
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

from benchmarks.common import machine, peak_gb, reset_peak
from loopfree.distiller import Distiller
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


def one_stage(args, stage: int, device: torch.device) -> tuple[float, float, int]:
    job = job_for(args, stage)
    components = preset(args.preset).build(seed=0)
    student = components.unet.__class__.from_config(components.unet.config)
    student.load_state_dict(components.unet.state_dict())
    student.enable_gradient_checkpointing()
    distiller = Distiller(components, job.distill_config, student_unet=student).to(device)
    engines = build_engines(distiller, deepspeed_config(job, grad_clip=job.distill_config.grad_clip))
    batch = {"input_ids": distiller.tokenize(["a photo of a cat"] * args.batch).to(device)}
    reset_peak(device)
    times, overflows = [], 0
    for step in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logs = train_iteration(distiller, *engines, batch, IterationRNG(0, step, 0, args.batch), step)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        overflows += int(logs["overflow"] > 0)
    return statistics.median(times[1:]) * 1000, peak_gb(device), overflows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="sd21_base", choices=["sd21_base", "tiny"])
    ap.add_argument("--job", default="jobs/distill.yaml", help="the job file whose DeepSpeed and method config are used")
    ap.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"], help="default: the job's")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    args = ap.parse_args()
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29511"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    precision = job_for(args, args.stages[0]).deepspeed.precision
    print(f"machine: {machine(device)}; job {args.job}, preset {args.preset}, {precision}, batch {args.batch}")
    for stage in args.stages:
        ms, gb, overflows = one_stage(args, stage, device)
        print(f"ZeRO-{stage}: {ms:.0f} ms per iteration (student + LoRA turn), peak memory {gb:.2f} GB, "
              f"{overflows} of {args.steps + 1} iterations with an fp16 loss-scale overflow", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
