"""Time and memory of one full distillation iteration (student turn + LoRA turn + EMA), batch 1, CPU.

Two models: the tiny preset, and the SD2.1-base architecture (random weights) at 32x32 latents.
For SD2.1-base the recipe's mixed precision is followed: trainable weights (student, LoRA) and the EMA
in fp32, the frozen networks (teacher base UNet, text encoder) in --frozen-dtype, gradient
checkpointing on the student. Memory is the process's peak resident set during the timed iterations.
The shared-base design (teacher and LoRA teacher are one UNet) is compared with holding three separate
UNets by the exact bytes of what the Distiller holds; a separate LoRA teacher would add one more copy
of the base UNet.

    python -m benchmarks.distill_iteration          # writes benchmarks/results/distill_iteration.md
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import statistics
import sys
import time

import torch

from benchmarks.common import machine, write_report
from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.memory import peak_gb, reset_peak
from loopfree.presets import sd21_base, tiny
from loopfree.rng import IterationRNG
from loopfree.training import local_engines, train_iteration


def tensor_gb(module: torch.nn.Module, lora: bool = True) -> float:
    named = [*module.named_parameters(), *module.named_buffers()]
    return sum(t.numel() * t.element_size() for n, t in named if lora or "lora_" not in n) / 2**30


def time_iterations(distiller: Distiller, warmup: int, repeats: int) -> tuple[float, float]:
    engines = local_engines(distiller)
    batch = {"input_ids": distiller.tokenize(["a photo of a cat"])}
    for step in range(warmup):
        train_iteration(distiller, *engines, batch, IterationRNG(0, step))
    reset_peak(torch.device("cpu"))
    times = []
    for step in range(warmup, warmup + repeats):
        start = time.perf_counter()
        train_iteration(distiller, *engines, batch, IterationRNG(0, step))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000, peak_gb(torch.device("cpu"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frozen-dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--repeats", type=int, default=3, help="timed SD2.1-base iterations (tiny: 10x this)")
    ap.add_argument("--out", default="benchmarks/results/distill_iteration.md")
    args = ap.parse_args()
    frozen = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.frozen_dtype]
    torch.manual_seed(0)

    tiny_ms, _ = time_iterations(Distiller(tiny().build(), DistillConfig()), warmup=3, repeats=10 * args.repeats)
    print(f"tiny: {tiny_ms:.1f} ms per iteration", flush=True)
    gc.collect()

    preset = sd21_base()
    preset = dataclasses.replace(preset, unet={**preset.unet, "sample_size": 32})
    components = preset.build()
    components.vae = None  # training never decodes; keep it out of the measurement
    student = copy.deepcopy(components.unet)  # fp32, before the frozen copy is cast
    student.enable_gradient_checkpointing()
    components.unet.to(frozen)
    components.text_encoder.to(frozen)
    gc.collect()
    distiller = Distiller(components, DistillConfig(), student_unet=student)
    del components, student
    gc.collect()
    sd_ms, sd_peak = time_iterations(distiller, warmup=1, repeats=args.repeats)
    print(f"sd21_base 32x32: {sd_ms:.0f} ms per iteration, peak {sd_peak:.2f} GB", flush=True)
    n_unet = sum(p.numel() for p in distiller.student.parameters()) / 1e6
    base = tensor_gb(distiller.unet, lora=False)
    held = {"student UNet (fp32)": tensor_gb(distiller.student), "EMA of the student (fp32)": tensor_gb(distiller.ema),
            f"shared base UNet, teacher + LoRA teacher ({args.frozen_dtype})": base,
            "LoRA weights (fp32)": tensor_gb(distiller.unet) - base,
            f"text encoder ({args.frozen_dtype})": tensor_gb(distiller.text_encoder)}

    lines = ["# One distillation iteration (student turn + LoRA turn + EMA), batch 1, CPU", "",
             f"Machine: {machine(torch.device('cpu'))}.",
             f"Command: `python -m benchmarks.distill_iteration {' '.join(sys.argv[1:])}`. Median of the timed iterations "
             f"after warm-up; SD2.1-base: trainable weights, Adam and EMA fp32, frozen teacher and text encoder "
             f"{args.frozen_dtype}, gradient checkpointing on the student, defaults of docs/method.md (K=4, LoRA rank 64).", "",
             "| model | latents | time per iteration (ms) | peak resident memory (GB) |", "|---|---|---|---|",
             f"| tiny preset | 8x8 | {tiny_ms:.1f} | - |",
             f"| SD2.1-base architecture ({n_unet:.0f}M-parameter UNet) | 32x32 | {sd_ms:.0f} | {sd_peak:.2f} |", "",
             "## Shared-base LoRA teacher vs three separate UNets (SD2.1-base)", "",
             "Weights the Distiller holds (exact parameter and buffer bytes):", "",
             "| component | GB |", "|---|---|", *[f"| {k} | {v:.2f} |" for k, v in held.items()],
             f"| **total held** | **{sum(held.values()):.2f}** |", "",
             f"A separate LoRA-teacher UNet (the three-UNet design) would add the base UNet again: "
             f"{base:.2f} GB, so the three-UNet iteration would peak at about {sd_peak + base:.2f} GB instead of the "
             f"{sd_peak:.2f} GB measured ({base / (sd_peak + base):.0%} less with the shared base). The rest of the "
             "peak is the student's gradients and Adam moments (3x the fp32 student) and activations.", ""]
    return write_report(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
