"""The `loopfree` command. Entry points stay thin: parse, validate, build, run, close."""

from __future__ import annotations

import argparse
import json
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

    from loopfree_platform.distill.job import load_job
    from loopfree_platform.jobfile import JobError, redact

    try:
        job = load_job(args.job)  # every check that needs no cluster happens here, before Ray starts
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump(redact(job.resolved()), sort_keys=False), end="")
        return 0
    from loopfree_platform.distill.driver import run_distill

    result = run_distill(job, address=args.address)
    print(f"distilled {result.steps} steps; corpus {result.corpus}")
    print(f"exported TiUE pipeline: {result.export_dir}")
    for path in result.samples[-1:]:
        print(f"latest sample grid (EMA student): {path}")
    if result.mlflow_run_id:
        print(f"MLflow run {result.mlflow_run_id}; registered model {job.tracking.registered_model} "
              f"version {result.model_version} (alias {job.tracking.alias})")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import yaml

    from loopfree_platform.distill.sweep import load_sweep
    from loopfree_platform.jobfile import redact

    loaded = _load(load_sweep, args.job)  # the sweep and EVERY variant are validated here, before Ray starts
    if loaded is None:
        return 2
    sweep, runs = loaded
    if args.dry_run:
        plan = {"sweep": sweep.model_dump(mode="json"),
                "runs": [{"name": job.name, "variant": name, "seed": seed, "method": job.resolved()["method"]}
                         for name, seed, job in runs]}
        print(yaml.safe_dump(redact(plan), sort_keys=False), end="")
        return 0
    from loopfree_platform.distill.sweep import tables
    from loopfree_platform.distill.sweep_driver import run_sweep

    result = run_sweep(sweep, runs, address=args.address)
    print(tables(result.rows)[0], end="")
    print(f"{len(result.rows)} runs; summary: {result.markdown} and {result.csv}"
          + (f"; MLflow parent run {result.parent_run_id}" if result.parent_run_id else ""))
    return 0


def _submit(args: argparse.Namespace) -> int:
    from loopfree_platform.distill.job import load_job
    from loopfree_platform.jobfile import JobError

    try:
        load_job(args.job)  # a bad job file fails here, before anything reaches the cluster
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from loopfree_platform.submit import submit

    return submit(args.job, address=args.address, follow=args.follow, working_dir=args.working_dir)


def _evaluate(args: argparse.Namespace) -> int:
    import yaml

    from loopfree_platform.evaluate.job import load_eval_job
    from loopfree_platform.jobfile import JobError, redact

    try:
        job = load_eval_job(args.job)  # bad keys and missing paths fail here, before Ray starts
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(yaml.safe_dump(redact(job.model_dump(mode="json")), sort_keys=False), end="")
        return 0
    from loopfree_platform.evaluate.driver import run_evaluate

    _, files, run_id = run_evaluate(job, address=args.address)
    print(files["markdown"].read_text(), end="")
    print(f"results: {files['markdown']} and {files['csv']}" + (f"; MLflow run {run_id}" if run_id else ""))
    return 0


def _analyze_features(args: argparse.Namespace) -> int:
    from loopfree.analysis import adjacent_step_similarity
    from loopfree.pipeline import TiUEPipeline
    from loopfree.presets import load_components, preset
    from loopfree_platform.evaluate.report import write_similarity

    if (args.model_dir is None) == (args.preset is None):
        raise SystemExit("give exactly one of --model-dir and --preset")
    if args.steps < 2 or args.num_prompts < 1:
        raise SystemExit("--steps must be >= 2 and --num-prompts >= 1")
    components = load_components(args.model_dir) if args.model_dir else preset(args.preset).build(seed=args.seed)
    pipe = TiUEPipeline.from_components(components)
    pool = DEMO_PROMPTS
    if args.prompts:  # prompts the model was trained for (the demo prompts suit SD-scale models)
        from loopfree.evaldata import read_prompts

        pool = [p for _, p in read_prompts(args.prompts, "text")]
    prompts = (pool * args.num_prompts)[:args.num_prompts]
    rows = adjacent_step_similarity(pipe, prompts, list(range(args.seed, args.seed + len(prompts))), args.steps, args.guidance)
    source = args.model_dir or f"{args.preset} preset, random weights"
    files = write_similarity(rows, Path(args.out), f"{source}: DDIM {args.steps} steps, cfg {args.guidance}")
    print(f"{len(rows)} steps; encoder cosine mean {sum(r.encoder_cosine for r in rows) / len(rows):.4f}, "
          f"decoder cosine mean {sum(r.decoder_cosine for r in rows) / len(rows):.4f}")
    print(f"written: {files['csv']} and {files['png']}")
    return 0


def _load(loader, path: str):
    """A validated job, or None after printing the error: bad files fail here, before any cluster work."""
    from loopfree_platform.jobfile import JobError

    try:
        return loader(path)
    except JobError as err:
        print(f"error: {err}", file=sys.stderr)
        return None


def _print_job(job) -> int:
    from loopfree_platform.jobfile import redact

    print(json.dumps(redact(job.model_dump(mode="json")), indent=2))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import time

    from loopfree_platform.serve.job import load_serve_job

    job = _load(load_serve_job, args.job)  # a bad job file (or a missing model directory) fails before Ray starts
    if job is None:
        return 2
    if args.dry_run:
        return _print_job(job)
    from loopfree_platform.serve.app import start

    url = start(job, address=args.address)
    print(f"serving {job.model.source} at {url} (POST /generate, GET /model, GET /healthz); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        from ray import serve

        serve.shutdown()
    return 0


def _generate(args: argparse.Namespace) -> int:
    from loopfree_platform.serve.job import load_generate_job

    job = _load(load_generate_job, args.job)  # bad keys, a missing prompt file or model fail before Ray starts
    if job is None:
        return 2
    if args.dry_run:
        return _print_job(job)
    from loopfree_platform.serve.generate import GenerateError, run_generate

    try:
        result = run_generate(job, address=args.address)
    except GenerateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{result.generated} images generated, {result.skipped} already done; "
          f"{result.total} in {result.manifest} (model {result.model_version})")
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
    distill = sub.add_parser("distill", help="run a distillation job file (local Ray instance unless --address)")
    distill.add_argument("job", help="job file, e.g. jobs/smoke.yaml")
    distill.add_argument("--dry-run", action="store_true", help="validate and print the resolved job, run nothing")
    distill.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    distill.set_defaults(func=_distill)
    sweep = sub.add_parser("sweep", help="run a sweep job file: variants of a distillation job as Ray Tune trials")
    sweep.add_argument("job", help="sweep job file, e.g. jobs/sweep_quickstart.yaml")
    sweep.add_argument("--dry-run", action="store_true", help="validate every variant and print them, run nothing")
    sweep.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    sweep.set_defaults(func=_sweep)
    submit = sub.add_parser("submit", help="submit a distillation job to a Ray cluster through the Jobs API")
    submit.add_argument("job", help="job file, relative to --working-dir")
    submit.add_argument("--address", default=None, help="Ray dashboard address (default: RAY_ADDRESS or http://127.0.0.1:8265)")
    submit.add_argument("--working-dir", default=".", help="uploaded as the job's working directory (default: .)")
    submit.add_argument("--follow", action="store_true", help="stream logs until the job ends; exit with its status")
    submit.set_defaults(func=_submit)
    evaluate = sub.add_parser("evaluate", help="run an evaluation job file: FID, CLIP, PRDC table (jobs/evaluate.yaml)")
    evaluate.add_argument("job", help="evaluation job file, e.g. jobs/evaluate.yaml")
    evaluate.add_argument("--dry-run", action="store_true", help="validate and print the resolved job, run nothing")
    evaluate.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    evaluate.set_defaults(func=_evaluate)
    analyze = sub.add_parser("analyze-features", help="encoder vs decoder feature similarity between adjacent teacher "
                                                      "sampling steps (CSV + PNG)")
    analyze.add_argument("--model-dir", default=None, help="teacher in diffusers layout (local directory)")
    analyze.add_argument("--preset", default=None, choices=["tiny"], help="random-initialised preset instead")
    analyze.add_argument("--steps", type=int, default=50, help="DDIM sampling steps (default 50)")
    analyze.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    analyze.add_argument("--num-prompts", type=int, default=4, help="images averaged per step (default 4)")
    analyze.add_argument("--prompts", default=None, help="text file, one prompt per line (default: the demo prompts)")
    analyze.add_argument("--seed", type=int, default=0, help="first seed (and preset weights seed)")
    analyze.add_argument("--out", default="runs/analysis", help="output folder (default: runs/analysis)")
    analyze.set_defaults(func=_analyze_features)
    serve = sub.add_parser("serve", help="serve a TiUE model over HTTP with Ray Serve (jobs/serve.yaml)")
    serve.add_argument("job", help="serve job file, e.g. jobs/serve.yaml")
    serve.add_argument("--dry-run", action="store_true", help="validate and print the job, start nothing")
    serve.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    serve.set_defaults(func=_serve)
    generate = sub.add_parser("generate", help="batch-generate images for a prompt file with Ray Data (jobs/generate.yaml); "
                                               "re-running skips what is done")
    generate.add_argument("job", help="generation job file, e.g. jobs/generate.yaml")
    generate.add_argument("--dry-run", action="store_true", help="validate and print the job, generate nothing")
    generate.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    generate.set_defaults(func=_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
