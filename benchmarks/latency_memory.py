"""The paper's "Inference: Time (ms), Memory (GB)" columns (the paper's Table 1, docs/method.md): end-to-end time per image
(text encoding + UNet work + VAE decode, batch 1) and peak memory, for each system, on one device, in one run.

Systems come from an evaluation job file (every system that generates; image folders have no timing), or
by default the paper's SD2.1-base family on one set of random-initialised components of a preset (timing
does not depend on the weights' values): SD2.1 50 steps cfg 7.5, SD-Turbo-like 1 and 4 steps (the
teacher's UNet without CFG), SwiftBrush (1 step), TiUE (1 encoder + 4 decoder passes).
Memory: CUDA peak allocated; on CPU the process's peak resident set during the row (weights included).

    python -m benchmarks.latency_memory --preset tiny                  # seconds, CPU smoke numbers
    python -m benchmarks.latency_memory --preset sd21_base --device cuda --dtype fp16
    python -m benchmarks.latency_memory --job jobs/evaluate.yaml --eval-results runs/eval/eval-tiny/results.csv
"""

from __future__ import annotations

import argparse
import csv
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from benchmarks.common import machine, write_report
from loopfree.features import to_uint8
from loopfree.memory import peak_gb, reset_peak
from loopfree.systems import DTYPES, load_system

PROMPT = "a photo of an astronaut riding a horse on the moon"
Row = tuple[str, str, Callable[[], torch.Tensor]]  # (method, steps, generate one image)


def preset_rows(name: str, device: torch.device, dtype: torch.dtype) -> Iterator[Row]:
    """The paper's SD2.1-base family on shared random components (one copy of the weights for all rows)."""
    from loopfree.pipeline import TiUEPipeline
    from loopfree.presets import preset

    components = preset(name).build(seed=0)
    tiue = TiUEPipeline.from_components(components, num_steps=4).to(device, dtype)
    one = TiUEPipeline.from_components(components, num_steps=1, mode="one_step")  # same modules, other plan
    for pipe in (tiue, one):
        pipe.set_progress_bar_config(disable=True)

    def teacher(steps: int, scale: float):
        return lambda: to_uint8(tiue.sample_multistep([PROMPT], steps, scale, seeds=[0], output_type="np").images)
    yield "SD2.1 cfg 7.5 (teacher)", "50", teacher(50, 7.5)
    yield "SD-Turbo-like 1 step (teacher UNet, no CFG)", "1", teacher(1, 1.0)
    yield "SD-Turbo-like 4 steps (teacher UNet, no CFG)", "4", teacher(4, 1.0)
    yield "SwiftBrush (1-step mode)", "1", lambda: to_uint8(one([PROMPT], seeds=[0], output_type="np").images)
    yield "TiUE", "1 enc + 4 dec", lambda: to_uint8(tiue([PROMPT], seeds=[0], output_type="np").images)


def job_rows(path: str, device: torch.device, dtype: str) -> Iterator[Row]:
    """Each generating system of an evaluation job, loaded one at a time (and freed before the next)."""
    from loopfree_platform.evaluate.job import load_eval_job

    for system in load_eval_job(path).systems:
        if system.kind == "images":
            continue
        generate, steps = load_system(system.system_config(dtype), device, batch_size=1)
        yield system.name, system.steps or steps, lambda g=generate: g([PROMPT], [0])
        del generate


def measure(fn: Callable[[], torch.Tensor], repeats: int, device: torch.device) -> tuple[float, float]:
    """(median ms per image, peak GB) after one warm-up call."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        fn()
        sync()
        reset_peak(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), peak_gb(device)


def merge(eval_csv: Path, timings: dict[str, tuple[float, float]]) -> list[str]:
    """The evaluation table with the time and memory columns filled in by method name (Markdown lines)."""
    with eval_csv.open() as f:
        rows = list(csv.DictReader(f))
    columns = list(rows[0]) + ["time ms", "memory GB"] if rows else []
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        ms, gb = timings.get(r["method"], (None, None))
        extra = ["-", "-"] if ms is None else [f"{ms:.1f}", f"{gb:.2f}"]
        lines.append("| " + " | ".join([*r.values(), *extra]) + " |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", choices=["tiny", "sd21_base", "sd15"], help="default systems' architecture")
    ap.add_argument("--job", default=None, help="time the systems of this evaluation job instead")
    ap.add_argument("--eval-results", default=None, help="results.csv of that job: write the merged table too")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per row after one warm-up (median)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/latency_memory_<device>.md")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    rows = job_rows(args.job, device, args.dtype) if args.job else preset_rows(args.preset, device, dtype)
    table, timings = [], {}
    for method, steps, fn in rows:
        ms, gb = measure(fn, args.repeats, device)
        timings[method] = (ms, gb)
        table.append(f"| {method} | {steps} | {ms:.1f} | {gb:.2f} |")
        print(f"{method:40s} {steps:14s} {ms:10.1f} ms {gb:6.2f} GB", flush=True)
        gc.collect()
    source = f"systems of {args.job}" if args.job else f"{args.preset} preset, random weights"
    lines = [f"# Inference time and memory per image ({source}; {args.device}, {args.dtype}, batch 1)", "",
             f"Machine: {machine(device)}.",
             f"End to end: text encoding + UNet work + VAE decode to a uint8 image. Median of {args.repeats} runs after "
             "a warm-up. Command: `python -m benchmarks.latency_memory " + " ".join(sys.argv[1:]) + "`", "",
             "| method | steps | time ms | memory GB |", "|---|---|---|---|", *table, ""]
    if args.eval_results:
        lines += ["Evaluation table with the timing columns:", "", *merge(Path(args.eval_results), timings), ""]
    return write_report(args.out or f"benchmarks/results/latency_memory_{args.device}.md", lines)


if __name__ == "__main__":
    sys.exit(main())
