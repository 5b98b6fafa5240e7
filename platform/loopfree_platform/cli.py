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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopfree", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate an image grid with a TiUE pipeline on the tiny preset")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--preset", default="tiny", choices=["tiny"], help="model preset (random weights)")
    demo.add_argument("--num-steps", type=int, default=4, help="K decoder timesteps (default 4)")
    demo.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed+i")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
