"""One SD2.1-base-shaped distillation step (random weights) under DeepSpeed ZeRO-2 and ZeRO-3.

Single process, world size 1, the platform's own engines (`loopfree_platform.distill.engines`) and loop body
(`loopfree.training.train_iteration`). Prints step time (median after a warm-up) and peak memory.

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

from benchmarks.common import machine, peak_gb, reset_peak
from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.presets import preset
from loopfree.rng import IterationRNG
from loopfree.training import train_iteration


def one_stage(args, stage: int, device: torch.device) -> tuple[float, float]:
    components = preset(args.preset).build(seed=0)
    student = components.unet.__class__.from_config(components.unet.config)
    student.load_state_dict(components.unet.state_dict())
    student.enable_gradient_checkpointing()
    distiller = Distiller(components, DistillConfig(), student_unet=student).to(device)
    ds = {"train_micro_batch_size_per_gpu": args.batch, "train_batch_size": args.batch, "gradient_accumulation_steps": 1,
          "gradient_clipping": 1.0, "zero_optimization": {"stage": stage}, "bf16": {"enabled": args.precision == "bf16"},
          "fp16": {"enabled": args.precision == "fp16"}, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}
    engines = build_engines(distiller, ds)
    batch = {"input_ids": distiller.tokenize(["a photo of a cat"] * args.batch).to(device)}
    reset_peak(device)
    times = []
    for step in range(args.steps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_iteration(distiller, *engines, batch, IterationRNG(0, step, 0, args.batch))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) * 1000, peak_gb(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="sd21_base", choices=["sd21_base", "tiny"])
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    ap.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    args = ap.parse_args()
    device = torch.device("cuda", 0) if args.device == "cuda" else torch.device("cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT", "29511"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    print(f"machine: {machine(device)}; preset {args.preset}, {args.precision}, batch {args.batch}")
    for stage in args.stages:
        ms, gb = one_stage(args, stage, device)
        print(f"ZeRO-{stage}: {ms:.0f} ms per iteration (student + LoRA turn), peak memory {gb:.2f} GB", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
