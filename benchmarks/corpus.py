"""Prompt corpus throughput: a synthetic 1.4M-prompt JourneyDB-format corpus through the whole pipeline.

Pipeline = parse JSONL + drop bad/empty + deduplicate + deterministic order (sort) + tokenise (the real
CLIP tokenizer, in Ray Data map_batches) + stream to a consumer. Baseline, same process, same machine:
plain batched tokenisation of the same prompts with the same tokenizer (no Ray).

    python -m benchmarks.corpus                      # writes benchmarks/results/corpus.md
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import ray
from loopfree_platform.distill.corpus import prepare_corpus, tokenized
from loopfree_platform.runtime import ensure_ray

from benchmarks.common import machine, write_report
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=1_400_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--tokenize-actors", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/corpus.md")
    args = ap.parse_args()
    ensure_ray()
    tokenizer = clip_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_corpus(Path(tmp), args.prompts, args.files)

        t0 = time.perf_counter()
        ordered, stats = prepare_corpus(paths, "journeydb", epochs=1, seed=0)
        t_prepare = time.perf_counter() - t0
        stream = tokenized(ordered, tokenizer, concurrency=args.tokenize_actors)
        t1, n = time.perf_counter(), 0
        for batch in stream.iter_batches(batch_size=1024, batch_format="numpy"):
            n += len(batch["input_ids"])
        t_stream = time.perf_counter() - t1
        total = time.perf_counter() - t0

        prompts = [r["prompt"] for r in ordered.take(200_000)]
    t2 = time.perf_counter()
    for i in range(0, len(prompts), 1024):
        tokenizer(prompts[i:i + 1024], padding="max_length", max_length=77, truncation=True, return_tensors="np")
    baseline = len(prompts) / (time.perf_counter() - t2)
    ray.shutdown()

    lines = ["# Prompt corpus throughput (Ray Data)", "", f"Machine: {machine(__import__('torch').device('cpu'))}.",
             f"Command: `python -m benchmarks.corpus {' '.join(sys.argv[1:])}`", "",
             f"Synthetic JourneyDB-format corpus: {args.prompts:,} records in {args.files} JSONL files; "
             f"after cleaning: {stats.as_dict()}.", "",
             "| stage | time (s) | prompts/s |", "|---|---|---|",
             f"| prepare: parse, clean, count, dedupe, order (driver, once per job) | {t_prepare:.1f} | "
             f"{args.prompts / t_prepare:,.0f} |",
             f"| stream: tokenise ({args.tokenize_actors} actors) and deliver token ids | {t_stream:.1f} | {n / t_stream:,.0f} |",
             f"| whole pipeline | {total:.1f} | **{n / total:,.0f}** |",
             f"| baseline: plain batched tokenisation, one process, no Ray | - | {baseline:,.0f} |", "",
             f"Streaming token ids runs at **{n / t_stream / baseline:.2f}x** the plain-tokenisation baseline; "
             f"the whole pipeline including the one-off preparation at {n / total / baseline:.2f}x.", ""]
    return write_report(args.out, lines)


if __name__ == "__main__":
    sys.exit(main())
