"""A small corpus prepared cold (first use of Ray Data's workers on a fresh local Ray) and warm.

    python -m benchmarks.corpus_small --prompts 80
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray.data
from loopfree_platform.distill.corpus import prepare_corpus
from loopfree_platform.runtime import ensure_ray

from benchmarks.corpus import write_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=80)
    args = ap.parse_args()
    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    paths = write_corpus(Path(tempfile.mkdtemp()), args.prompts, 1)
    for attempt in ("cold", "warm", "warm"):
        t0 = time.perf_counter()
        _, stats = prepare_corpus(paths, "journeydb")
        print(f"{attempt}: prepare_corpus {time.perf_counter() - t0:.2f} s, {stats.as_dict()}", flush=True)


if __name__ == "__main__":
    main()
