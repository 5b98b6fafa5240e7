"""The study's losses, step by step, for one short recipe: run on two checkouts, the outputs must be equal.

A refactor must not change the study's numbers. This prints, one JSON line per update, every number that
`loopfree.training.train_iteration` returns for the first N updates of a study recipe, set up exactly as the
study sets up a run (`benchmarks/fashion/study.py`: seed, teacher, batches, per-sample randomness), with
`loopfree`, `examples` and `benchmarks` imported from the current directory, so the same file measures an
older checkout too. Keys the fake score's renaming changed are printed under their new names.

    git worktree add /tmp/before <commit>
    (cd /tmp/before && PYTHONPATH=. python /path/to/benchmarks/same_losses.py) > before.jsonl
    PYTHONPATH=. python benchmarks/same_losses.py > after.jsonl && cmp before.jsonl after.jsonl

Results: benchmarks/results/same_losses.md.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd()))  # the checkout being measured, before this file's own folder
RENAMED_LOGS = {"loss_lora": "loss_fake_score", "grad_norm_lora": "grad_norm_fake_score", "lr_lora": "lr_fake_score"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="full-ttur5-guid2-1-x0err")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    import loopfree
    from benchmarks.fashion import study
    from examples.fashion.data import all_captions
    from loopfree.config import DistillConfig
    from loopfree.distiller import Distiller
    from loopfree.presets import load_components
    from loopfree.rng import IterationRNG
    from loopfree.training import local_engines, train_iteration

    print(f"measuring {Path(loopfree.__file__).parent}", file=sys.stderr)  # the checkout, not an installed copy
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)  # as study.run: before the teacher is loaded
    components = load_components(study.TEACHER)
    distiller = Distiller(components, DistillConfig(**{**study.BASE, **study.RECIPES[args.recipe]}))
    engines = local_engines(distiller)
    data = study.batches(distiller.tokenize, all_captions(), 8, args.seed)
    for step in range(args.steps):
        logs = train_iteration(distiller, *engines, next(data), IterationRNG(args.seed, step, 0, 8), step)
        row = {RENAMED_LOGS.get(k, k): float(v) for k, v in logs.items()}
        print(json.dumps({"step": step + 1, **dict(sorted(row.items()))}), flush=True)


if __name__ == "__main__":
    main()
