"""UNet work per image for the teacher, the 1-step student and TiUE, on the SD2.1-base architecture.

Random weights (timing does not depend on their values), batch 1, one process, one device, so the
ratios compare like with like on a shared, noisy machine. Rows:
  teacher 50 steps, CFG   50 UNet calls at batch 2 ([uncond; cond], as diffusers' SD pipelines run it)
  teacher 4 steps, CFG    4 UNet calls at batch 2
  1-step (SwiftBrush)     1 UNet call at t = 999
  TiUE K=4 batched        1 encoder pass at batch 1 + 1 decoder pass at batch 4
  TiUE K=4 sequential     1 encoder pass + 4 decoder passes at batch 1 (the definition, for the ratio)
Memory: CUDA peak allocated, or on CPU the process's peak resident set during the row (VmHWM after
clearing it, with freed memory trimmed first), weights included.

    python -m benchmarks.inference                       # CPU, 32x32 and 64x64 latents
    python -m benchmarks.inference --device cuda --dtype fp16 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from benchmarks.common import machine, peak_gb, reset_peak, write_report
from loopfree.presets import SD_SCHEDULER, sd21_base
from loopfree.schedule import ddim_plan, one_step_plan
from loopfree.tiue import TiUEGenerator, decode, encode


def teacher_rows(unet, scheduler_config):
    def teacher(steps):
        scheduler = DDIMScheduler(**scheduler_config)
        scheduler.set_timesteps(steps)

        def run(z, text, uncond):
            for t in scheduler.timesteps:
                e_u, e_c = unet(z.repeat(2, 1, 1, 1), t, encoder_hidden_states=torch.cat([uncond, text])).sample.chunk(2)
                z = scheduler.step(e_u + 7.5 * (e_c - e_u), t, z).prev_sample
            return z
        return run
    return teacher(50), teacher(4)


def student_rows(unet, alphas):
    plan = ddim_plan(alphas, 4, "leading")
    tiue = TiUEGenerator(unet, plan)
    one_step = TiUEGenerator(unet, one_step_plan(alphas), mode="one_step")

    def sequential(z, text, _):
        features = encode(unet, z, plan.timesteps[0], text)
        eps = torch.stack([decode(unet, features, [t], text) for t in plan.timesteps])
        return plan.apply(z, eps)
    return (lambda z, text, _: one_step(z, text)[0]), (lambda z, text, _: tiue(z, text)[0]), sequential


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, warmup, args, repeats, device):
    with torch.inference_mode():
        warmup(*args)  # allocator, kernels, caches: same shapes as fn, maybe fewer calls
        sync(device)
        reset_peak(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(*args)
            sync(device)
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), peak_gb(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64], help="latent sizes (64 = 512 px)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row after one warm-up (median)")
    ap.add_argument("--teacher-repeats", type=int, default=1, help="timed runs of the 50-step row")
    ap.add_argument("--out", default="benchmarks/results/inference.md")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd21_base().unet).to(device, dtype).eval()
    alphas = DDIMScheduler(**SD_SCHEDULER).alphas_cumprod
    t50, t4 = teacher_rows(unet, SD_SCHEDULER)
    s1, tiue, seq = student_rows(unet, alphas)
    # (name, UNet calls, function, timed runs, warm-up: the 4-step loop warms the 50-step one)
    rows = [("teacher 50 steps, CFG 7.5", "50 x batch 2", t50, args.teacher_repeats, t4),
            ("teacher 4 steps, CFG 7.5", "4 x batch 2", t4, args.repeats, t4),
            ("1-step (SwiftBrush mode)", "1 x batch 1", s1, args.repeats, s1),
            ("TiUE K=4, batched decoder", "enc 1 + dec 1 x batch 4", tiue, args.repeats, tiue),
            ("TiUE K=4, sequential decoder", "enc 1 + dec 4 x batch 1", seq, args.repeats, seq)]
    text = torch.randn(1, 77, 1024, device=device, dtype=dtype)
    uncond = torch.randn(1, 77, 1024, device=device, dtype=dtype)

    lines = [f"# Inference: UNet work per image, SD2.1-base architecture ({args.device}, {args.dtype}, batch 1)", "",
             f"Machine: {machine(device)}.",
             f"Median of {args.repeats} runs after a warm-up ({args.teacher_repeats} for the 50-step row). "
             "Command: `python -m benchmarks.inference " + " ".join(sys.argv[1:]) + "`", ""]
    for size in args.sizes:
        z = torch.randn(1, 4, size, size, device=device, dtype=dtype)
        ms, table = [], []
        for name, calls, fn, repeats, warmup in rows:
            row_ms, gb = measure(fn, warmup, (z, text, uncond), repeats, device)
            ms.append(row_ms)
            table.append(f"| {name} | {calls} | {row_ms:.1f} | {gb:.2f} |")
            print(f"latent {size}x{size}  {name:30s} {row_ms:10.1f} ms  {gb:6.2f} GB", flush=True)
        t50_ms, _, s1_ms, tiue_ms, seq_ms = ms
        lines += [f"## Latents {size}x{size} ({size * 8} px)", "", "| system | UNet calls | time (ms) | peak memory (GB) |",
                  "|---|---|---|---|", *table, "",
                  f"- TiUE / 1-step: **{tiue_ms / s1_ms:.2f}x**",
                  f"- TiUE batched / TiUE sequential: **{tiue_ms / seq_ms:.2f}x**",
                  f"- teacher 50-step / TiUE: **{t50_ms / tiue_ms:.1f}x**", ""]
    return write_report(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
