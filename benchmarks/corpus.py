"""Prompt corpus throughput: a synthetic 1.4M-prompt JourneyDB-format corpus through the whole pipeline.

Pipeline = parse JSONL + drop bad/empty + deduplicate + deterministic order (sort) + each training worker's
share streamed to it (`RankShards`, as the distill job assigns it) and tokenised there (the real CLIP
tokenizer), for 1, 2 and 4 workers (consumers run as Ray tasks, as the Train workers are Ray actors).
Baseline, same process, same machine: plain batched tokenisation of the same prompts with the same
tokenizer (no Ray). Last, the distill job's own data wait per step (jobs/smoke.yaml, 2 workers).

    python -m benchmarks.corpus                      # writes benchmarks/results/corpus.md
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ray
from loopfree_platform.distill.corpus import RankShards, prepare_corpus
from loopfree_platform.runtime import ensure_ray

from benchmarks.common import machine, write_report
from benchmarks.distill_job import run_job
from loopfree.tokenizer import clip_tokenizer

WORDS = ("a photo of cat dog city river neon portrait castle forest robot painting sunset ocean golden ancient "
         "futuristic detailed cinematic lighting watercolor octane render 8k highly intricate mountain").split()


def write_corpus(folder: Path, n: int, files: int, seed: int = 0) -> list[str]:
    """n JourneyDB-style records over `files` shards, with ~1% duplicates and ~0.1% bad lines."""
    rng = random.Random(seed)
    paths = [folder / f"train_anno_{i:02d}.jsonl" for i in range(files)]
    handles = [p.open("w") for p in paths]
    for i in range(n):
        r = rng.random()
        if r < 0.001:
            line = "{broken json"
        else:
            j = rng.randrange(i) if r < 0.011 and i else i  # duplicate of an earlier prompt
            caption = " ".join(random.Random(j).choices(WORDS, k=12)) + f" #{j}"
            line = json.dumps({"img_path": f"./{j}.jpg", "Task2": {"Caption": caption, "Category": "x"}})
        handles[i % files].write(line + "\n")
    for h in handles:
        h.close()
    return [str(p) for p in paths]


@ray.remote(num_cpus=0)  # like the Train workers, whose CPUs are reserved apart from Ray Data's
def _consume(iterator, batch_per_worker: int) -> int:
    """One training worker's side: iterate its share and tokenise each batch, as train.py does."""
    tokenizer, rows = clip_tokenizer(), 0
    for batch in iterator.iter_batches(batch_size=batch_per_worker * 64, batch_format="numpy"):
        rows += len(tokenizer(list(batch["prompt"]), padding="max_length", max_length=77, truncation=True,
                              return_tensors="np").input_ids)
    return rows


def stream_shares(ordered, workers: int, batch_per_worker: int) -> tuple[list[int], float]:
    """Every worker's share consumed concurrently: (rows tokenised per worker, seconds)."""
    G = workers * batch_per_worker
    steps = ordered.count() // G
    iterators = [s["train"] for s in RankShards(batch_per_worker, G, steps).configure({"train": ordered}, workers, None, None)]
    t0 = time.perf_counter()
    per_worker = ray.get([_consume.remote(it, batch_per_worker) for it in iterators])
    return per_worker, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1_400_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--batch-per-worker", type=int, default=8)
    ap.add_argument("--out", default="benchmarks/results/corpus.md")
    args = ap.parse_args()
    ensure_ray()
    tokenizer = clip_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_corpus(Path(tmp), args.prompts, args.files)

        t0 = time.perf_counter()
        ordered, stats = prepare_corpus(paths, "journeydb", epochs=1, seed=0)
        t_prepare = time.perf_counter() - t0
        shares = {workers: stream_shares(ordered, workers, args.batch_per_worker) for workers in (1, 2, 4)}
        prompts = [r["prompt"] for r in ordered.take(200_000)]
    t2 = time.perf_counter()
    for i in range(0, len(prompts), 1024):
        tokenizer(prompts[i:i + 1024], padding="max_length", max_length=77, truncation=True, return_tensors="np")
    baseline = len(prompts) / (time.perf_counter() - t2)
    ray.shutdown()
    _, _, job_rows, _, _ = run_job(steps=12)
    wait_ms = job_rows[-1]["data_wait_s_per_step"] * 1000
    step_ms = statistics.median(r["step_time_s"] for r in job_rows[2:]) * 1000

    n = stats.unique
    rows = []
    for workers, (per_worker, seconds) in shares.items():
        whole = t_prepare + seconds
        expected = n // (workers * args.batch_per_worker) * args.batch_per_worker  # whole global batches only
        rows.append(f"| {workers} | {min(per_worker):,} - {max(per_worker):,} | {expected:,} | {seconds:.1f} | "
                    f"{n / seconds:,.0f} | {whole:.1f} | **{n / whole:,.0f}** |")
    lines = ["# Prompt corpus throughput (Ray Data)", "", f"Machine: {machine(__import__('torch').device('cpu'))}.",
             f"Command: `python -m benchmarks.corpus {' '.join(sys.argv[1:])}`", "",
             f"Synthetic JourneyDB-format corpus: {args.prompts:,} records in {args.files} JSONL files; "
             f"after cleaning: {stats.as_dict()}.", "",
             f"Prepare (parse, clean, count, dedupe, order; driver, once per job): {t_prepare:.1f} s, "
             f"{args.prompts / t_prepare:,.0f} records/s.", "",
             f"Stream: every worker's share of the {args.batch_per_worker}-per-worker global batches, tokenised by "
             "the worker; all workers at once. Whole pipeline = prepare + stream.", "",
             "| workers | rows tokenised per worker | its share (whole global batches) | stream (s) | prompts/s "
             "| whole (s) | whole prompts/s |",
             "|---|---|---|---|---|---|---|", *rows, "",
             f"Baseline, plain batched tokenisation, one process, no Ray: {baseline:,.0f} prompts/s.", "",
             f"The distill job's data wait per step (jobs/smoke.yaml, 2 workers, 12 steps, rank 0, steady state): "
             f"{wait_ms:.2f} ms against a {step_ms:.0f} ms step ({wait_ms / step_ms:.1%}).", ""]
    return write_report(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
