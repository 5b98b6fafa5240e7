"""The `loopfree` command. Entry points stay thin: parse, validate, build, run, close."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEMO_PROMPTS = [
    "a photo of a cat", "a red sneaker on a white background", "an astronaut riding a horse",
    "a bowl of fruit, oil painting", "a lighthouse at dusk", "a small wooden cabin in the snow",
    "a black and white picture of a pullover", "a robot reading a book",
]


def _demo(args: argparse.Namespace) -> int:
    from loopfree import TiUEPipeline, preset
    from loopfree.images import image_grid

    if args.num_steps < 1:
        raise SystemExit(f"--num-steps must be >= 1, got {args.num_steps}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = TiUEPipeline.from_components(preset(args.preset).build(seed=args.seed), num_steps=args.num_steps)
    seeds = list(range(args.seed, args.seed + len(DEMO_PROMPTS)))
    result = pipe(DEMO_PROMPTS, seeds=seeds, batch_size=len(DEMO_PROMPTS))
    path = out / "grid.png"
    image_grid(result.images, cols=4).save(path)
    print(f"TiUE ({args.preset} preset, K={args.num_steps}, timesteps {pipe.config.timesteps}): "
          f"{len(result.images)} images, grid written to {path.resolve()}")
    return 0


def _distill(args: argparse.Namespace) -> int:
    import yaml

    from loopfree_platform.job import JobError, load_job, redact

    try:
        job = load_job(args.job)  # every check that needs no cluster happens here, before Ray starts
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump(redact(job.resolved()), sort_keys=False), end="")
        return 0
    from loopfree_platform.distill import run_distill

    result = run_distill(job, address=args.address)
    print(f"distilled {result.steps} steps; corpus {result.corpus}")
    print(f"exported TiUE pipeline: {result.export_dir}")
    for path in result.samples[-1:]:
        print(f"latest sample grid (EMA student): {path}")
    if result.mlflow_run_id:
        print(f"MLflow run {result.mlflow_run_id}; registered model {job.tracking.registered_model} "
              f"version {result.model_version} (alias {job.tracking.alias})")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from loopfree_platform.job import JobError, load_job

    try:
        load_job(args.job)  # a bad job file fails here, before anything reaches the cluster
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from loopfree_platform.submit import submit

    return submit(args.job, address=args.address, follow=args.follow, working_dir=args.working_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopfree", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate an image grid with a TiUE pipeline on the tiny preset")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--preset", default="tiny", choices=["tiny"], help="model preset (random weights)")
    demo.add_argument("--num-steps", type=int, default=4, help="K decoder timesteps (default 4)")
    demo.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed+i")
    demo.set_defaults(func=_demo)
    distill = sub.add_parser("distill", help="run a distillation job file (local Ray instance unless --address)")
    distill.add_argument("job", help="job file, e.g. jobs/smoke.yaml")
    distill.add_argument("--dry-run", action="store_true", help="validate and print the resolved job, run nothing")
    distill.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    distill.set_defaults(func=_distill)
    submit = sub.add_parser("submit", help="submit a distillation job to a Ray cluster through the Jobs API")
    submit.add_argument("job", help="job file, relative to --working-dir")
    submit.add_argument("--address", default=None, help="Ray dashboard address (default: RAY_ADDRESS or http://127.0.0.1:8265)")
    submit.add_argument("--working-dir", default=".", help="uploaded as the job's working directory (default: .)")
    submit.add_argument("--follow", action="store_true", help="stream logs until the job ends; exit with its status")
    submit.set_defaults(func=_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
