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
With --batches, the rows run at each batch size (time per image = time / batch), and the FLOPs of one
encoder pass (E) and one decoder pass (D) per image are counted (torch's FlopCounterMode), giving TiUE's
FLOP bound relative to the 1-step model, (E + K*D) / (E + D), to compare with the measured ratio where the
device is saturated.

    python -m benchmarks.inference                       # CPU, 32x32 and 64x64 latents
    python -m benchmarks.inference --device cuda --dtype fp16 --repeats 10
    python -m benchmarks.inference --device cuda --dtype fp16 --sizes 64 --batches 1 8 32 --no-teacher-50
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from benchmarks.common import machine, write_report
from loopfree.memory import peak_gb, reset_peak
from loopfree.presets import SD_SCHEDULER, sd21_base
from loopfree.schedule import ddim_plan, one_step_plan
from loopfree.systems import DTYPES
from loopfree.tiue import TiUEGenerator, decode, encode


def teacher_rows(unet, scheduler_config):
    def teacher(steps):
        scheduler = DDIMScheduler(**scheduler_config)
        scheduler.set_timesteps(steps)

        def run(z, text, uncond):
            for t in scheduler.timesteps:
                both = torch.cat([uncond.expand_as(text), text])  # [uncond; cond] for every prompt of the batch
                e_u, e_c = unet(z.repeat(2, 1, 1, 1), t, encoder_hidden_states=both).sample.chunk(2)
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


def unet_flops(unet, size: int, device, dtype) -> tuple[float, float]:
    """FLOPs per image of one encoder pass and one decoder pass at this latent size (counted at batch 1)."""
    from torch.utils.flop_counter import FlopCounterMode

    z = torch.randn(1, 4, size, size, device=device, dtype=dtype)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as enc:
            features = encode(unet, z, 999, text)
        with FlopCounterMode(display=False) as dec:
            decode(unet, features, [999], text)
    return float(enc.get_total_flops()), float(dec.get_total_flops())


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
    ap.add_argument("--batches", type=int, nargs="+", default=[1], help="batch sizes (prompts per call)")
    ap.add_argument("--no-teacher-50", action="store_true", help="skip the 50-step teacher row (long at large batches)")
    ap.add_argument("--out", default="benchmarks/results/inference.md")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]

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
    if args.no_teacher_50:
        rows = rows[1:]
    lines = [f"# Inference: UNet work per image, SD2.1-base architecture ({args.device}, {args.dtype})", "",
             f"Machine: {machine(device)}.",
             f"Median of {args.repeats} runs after a warm-up ({args.teacher_repeats} for the 50-step row). "
             "Command: `python -m benchmarks.inference " + " ".join(sys.argv[1:]) + "`", ""]
    for size in args.sizes:
        enc, dec = unet_flops(unet, size, device, dtype)
        bound = (enc + 4 * dec) / (enc + dec)
        lines += [f"## Latents {size}x{size} ({size * 8} px)", "",
                  f"FLOPs per image: encoder {enc / 1e9:.1f} G ({enc / (enc + dec):.0%} of a UNet call), decoder "
                  f"{dec / 1e9:.1f} G. TiUE K=4 FLOP bound relative to the 1-step model: (E + 4D) / (E + D) = "
                  f"**{bound:.2f}x**.", ""]
        for batch in args.batches:
            text = torch.randn(batch, 77, 1024, device=device, dtype=dtype)
            uncond = torch.randn(1, 77, 1024, device=device, dtype=dtype)
            z = torch.randn(batch, 4, size, size, device=device, dtype=dtype)
            ms, table = {}, []
            for name, calls, fn, repeats, warmup in rows:
                row_ms, gb = measure(fn, warmup, (z, text, uncond), repeats, device)
                ms[name] = row_ms / batch
                table.append(f"| {name} | {calls} | {row_ms:.1f} | {row_ms / batch:.2f} | {1000 * batch / row_ms:.1f} "
                             f"| {gb:.2f} |")
                print(f"latent {size}x{size} batch {batch:3d} {name:30s} {row_ms:10.1f} ms  {gb:6.2f} GB", flush=True)
            tiue_ms, s1_ms = ms["TiUE K=4, batched decoder"], ms["1-step (SwiftBrush mode)"]
            lines += [f"### Batch {batch}", "",
                      "| system | UNet calls (per prompt) | time (ms) | ms per image | images/s | peak memory (GB) |",
                      "|---|---|---|---|---|---|", *table, "",
                      f"- TiUE / 1-step per image: **{tiue_ms / s1_ms:.2f}x** (FLOP bound {bound:.2f}x: "
                      f"{tiue_ms / s1_ms / bound - 1:+.0%})",
                      f"- TiUE batched / TiUE sequential: **{tiue_ms / ms['TiUE K=4, sequential decoder']:.2f}x**",
                      f"- teacher 4-step / TiUE: **{ms['teacher 4 steps, CFG 7.5'] / tiue_ms:.1f}x**", ""]
    return write_report(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
