"""The distillation job on the tiny preset, CPU: steps/s, data wait, and the fixed start-up cost.

Runs jobs/smoke.yaml (2 workers, ZeRO-2, fp32) for --steps steps on a fresh local Ray instance and
reads the run's metrics.jsonl. The trainer "never waits on data" when the steady-state data wait per
step is a small fraction of the step time.

    python -m benchmarks.distill_job                  # writes benchmarks/results/distill_job.md
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml
from loopfree_platform.distill.callbacks import read_metrics
from loopfree_platform.distill.driver import run_distill
from loopfree_platform.distill.job import DistillJob
from loopfree_platform.runtime import ensure_ray

from benchmarks.common import machine, write_report


def run_job(steps: int, zero_stage: int = 2):
    """jobs/smoke.yaml for `steps` steps on a fresh local Ray: (job, result, metrics rows, Ray start s, wall s)."""
    data = yaml.safe_load(Path("jobs/smoke.yaml").read_text())
    tmp = tempfile.mkdtemp()
    data["storage"] = {"path": tmp}
    data["training"] = {"max_steps": steps, "log_every": 1}
    data["checkpoint"] = {"every_steps": steps}
    data["sampling"] = {"every_steps": steps}
    data["deepspeed"] = {"zero_stage": zero_stage}
    data["tracking"] = {"enabled": False}
    job = DistillJob.model_validate(data)
    t0 = time.perf_counter()
    ensure_ray()
    t_ray = time.perf_counter() - t0
    result = run_distill(job)
    total = time.perf_counter() - t0
    rows = read_metrics(f"{tmp}/{job.name}/metrics.jsonl")
    shutil.rmtree(tmp)
    return job, result, rows, t_ray, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--zero-stage", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/distill_job.md")
    args = ap.parse_args()
    job, result, rows, t_ray, total = run_job(args.steps, args.zero_stage)
    steady = [r["step_time_s"] for r in rows[2:]]
    last = rows[-1]
    G = job.scaling.global_batch_size
    step_s = statistics.median(steady)
    lines = ["# Distillation job, tiny preset, CPU", "", f"Machine: {machine(__import__('torch').device('cpu'))}.",
             f"Command: `python -m benchmarks.distill_job {' '.join(sys.argv[1:])}` (jobs/smoke.yaml: 2 workers x batch 2, "
             f"ZeRO-{args.zero_stage}, fp32, {args.steps} steps).", "",
             "| measure | value |", "|---|---|",
             f"| steady-state step time (median, steps 3..{args.steps}) | {step_s * 1000:.0f} ms |",
             f"| steps/s, compute only | **{1 / step_s:.2f}** ({G / step_s:.1f} prompts/s consumed) |",
             f"| steps/s, whole loop incl. a report per step | **{last['samples_per_s'] / G:.2f}** |",
             f"| data wait per step (steady state, rank 0) | {last['data_wait_s_per_step'] * 1000:.2f} ms "
             f"({last['data_wait_s_per_step'] / step_s:.1%} of a step) |",
             f"| first batch (starts the worker's Ray Data pipeline) | {last['first_batch_s']:.1f} s |",
             f"| worker start-up (models, DeepSpeed engines) | {last['worker_startup_s']:.1f} s |",
             f"| local Ray start | {t_ray:.1f} s |",
             f"| whole job, wall clock (corpus prep, trainer, checkpoints, export) | {total:.1f} s |", "",
             f"Corpus: {result.corpus}. The data pipeline's own capacity is measured in corpus.md.", ""]
    return write_report(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
