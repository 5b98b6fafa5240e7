"""What each `loopfree` command does once cli.py has read and validated its job: where its log goes, the work it
runs under the command's progress bar, and the summary it prints. Products are imported here lazily, so a bad
job file fails before Ray is even imported. Also the commands that take no job file: demo, analyze-features.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopfree_platform.console import LogFile, Progress, duration

DEMO_PROMPTS = [
    "a photo of a cat", "a red sneaker on a white background", "an astronaut riding a horse",
    "a bowl of fruit, oil painting", "a lighthouse at dusk", "a small wooden cabin in the snow",
    "a black and white picture of a pullover", "a robot reading a book",
]


@dataclass
class Work:
    """A job command's run: the work under the bar (quiet console, chatter to `log`), then its summary."""

    log: LogFile
    run: Callable[[Progress], Any]
    summary: Callable[[Any, float], str]  # (what run returned, seconds) -> the lines printed
    unit: str = "step"
    expected: tuple[type[Exception], ...] = ()  # errors that are the user's to fix: exit 2 with the message


def distill(job, args: argparse.Namespace) -> Work:
    from loopfree_platform.distill.driver import run_distill
    from loopfree_platform.distill.lease import RunLeaseError

    def summary(out, seconds: float) -> str:
        result, throughput = out
        shown = ", ".join(f"{k} {result.metrics[k]:.3g}" for k in ("loss_vsd", "loss_sid", "loss_fake_score", "eval/fid")
                          if isinstance(result.metrics.get(k), (int, float)))
        speed = f", {throughput * job.scaling.global_batch_size:.2f} samples/s" if throughput else ""
        c = result.corpus
        lines = [f"distilled {result.steps} steps in {duration(seconds)}{speed}" + (f"; final {shown}" if shown else ""),
                 f"corpus: {c['unique']} prompts of {c['records']} records ({c['bad']} bad, {c['empty']} empty, "
                 f"{c['duplicates']} duplicates)", f"exported TiUE pipeline: {result.export_dir}"]
        lines += [f"latest sample grid (EMA student): {path}" for path in result.samples[-1:]]
        if result.mlflow_run_id:
            lines.append(f"MLflow run {result.mlflow_run_id}; registered model {job.tracking.registered_model} "
                         f"version {result.model_version} (alias {job.tracking.alias})")
        lines += [f"MLflow UI: {result.mlflow_page}"] if result.mlflow_page else []
        return "\n".join(lines)

    return Work(LogFile.under(job.run_dir(), "driver.log", job.storage.endpoint_url, job.name),
                lambda bar: (run_distill(job, address=args.address, progress=bar), bar.throughput), summary,
                expected=(RunLeaseError,))


def sweep(loaded, args: argparse.Namespace) -> Work:
    from loopfree_platform import storage
    from loopfree_platform.distill.sweep import tables
    from loopfree_platform.distill.sweep_driver import run_sweep

    spec, runs = loaded
    first = runs[0][2]

    def summary(result, seconds: float) -> str:
        return (tables(result.rows)[0] + f"{len(result.rows)} runs in {duration(seconds)}; summary: {result.markdown} "
                f"and {result.csv}" + (f"; MLflow parent run {result.parent_run_id}" if result.parent_run_id else ""))

    return Work(LogFile.under(storage.join(first.storage.path, spec.name), "driver.log", first.storage.endpoint_url,
                              spec.name), lambda bar: run_sweep(spec, runs, address=args.address, progress=bar), summary)


def evaluate(job, args: argparse.Namespace) -> Work:
    from loopfree_platform.evaluate.driver import run_evaluate
    from loopfree_platform.jobfile import JobError

    def summary(out, seconds: float) -> str:
        results, files, run_id = out
        return (files["markdown"].read_text() + f"{len(results)} systems in {duration(seconds)}; results: "
                f"{files['markdown']} and {files['csv']}" + (f"; MLflow run {run_id}" if run_id else ""))

    # JobError: what the job file asks for that shows only once its prompts are read (their seeds' range)
    return Work(LogFile.under(str(job.out_dir()), "evaluate.log", name=job.name),
                lambda bar: run_evaluate(job, address=args.address), summary, unit="img", expected=(JobError,))


def generate(job, args: argparse.Namespace) -> Work:
    from loopfree_platform.serve.generate import GenerateError, run_generate

    def summary(result, seconds: float) -> str:
        rate = f", {result.generated / result.seconds:.2f} img/s" if result.generated and result.seconds else ""
        return (f"{result.generated} images generated, {result.skipped} already done, in {duration(result.seconds)}"
                f"{rate}; {result.total} in {result.manifest} (model {result.model_version})")

    return Work(LogFile.under(job.output.root, "generate.log", job.output.endpoint_url, job.name),
                lambda bar: run_generate(job, address=args.address), summary, unit="img", expected=(GenerateError,))


def check_serve(job, args: argparse.Namespace) -> None:
    """The token lives in this shell's environment: checked before Ray starts (raises JobError)."""
    from loopfree_platform.serve.job import check_token

    check_token(job, args.job)


def serve(job, args: argparse.Namespace) -> int:
    from loopfree_platform.serve.monitor import run_serve

    return run_serve(job, args.job, args.address, args.verbose)  # its own quiet console: traffic lines, serve.log


def check_submitted(kind: str, job, upload: Path) -> None:
    """What a distillation job will refuse on the cluster, checked before the upload (raises JobError)."""
    if kind == "distill":
        from loopfree_platform.distill.job import check_submitted as check

        check(job, upload=upload)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--preset", default="tiny", choices=["tiny"], help="model preset (random weights)")
    parser.add_argument("--num-steps", type=int, default=4, help="K decoder timesteps (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed+i")


def demo(args: argparse.Namespace) -> int:
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


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", default=None, help="teacher in diffusers layout (local directory)")
    parser.add_argument("--preset", default=None, choices=["tiny"], help="random-initialised preset instead")
    parser.add_argument("--steps", type=int, default=50, help="DDIM sampling steps (default 50)")
    parser.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--num-prompts", type=int, default=4, help="images averaged per step (default 4)")
    parser.add_argument("--prompts", default=None, help="text file, one prompt per line (default: the demo prompts)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (and preset weights seed)")
    parser.add_argument("--out", default="runs/analysis", help="output folder (default: runs/analysis)")


def analyze_features(args: argparse.Namespace) -> int:
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
