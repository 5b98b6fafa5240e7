"""The `loopfree` command. Entry points stay thin: parse, validate, build, run, close.

Every job command (distill, sweep, evaluate, serve, generate, submit) works one way: the job file is read
as YAML, ``--set section.key=value`` overrides (the value parsed as YAML) are applied to it, and the whole
job is validated before any cluster work: a bad file exits 2 with ``error: <file>: <key>: ...``;
``--dry-run`` prints the resolved job as YAML. A run shows one progress bar (stderr) and a short summary
(stdout); what Ray, its workers, DeepSpeed and MLflow print goes to the run's log file (``--verbose``
keeps it on the terminal).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
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


# kind -> (module, loader): every loader raises JobError naming the file and the key
LOADERS = {
    "distill": ("loopfree_platform.distill.job", "load_job"),
    "sweep": ("loopfree_platform.distill.sweep", "load_sweep"),
    "evaluate": ("loopfree_platform.evaluate.job", "load_eval_job"),
    "serve": ("loopfree_platform.serve.job", "load_serve_job"),
    "generate": ("loopfree_platform.serve.job", "load_generate_job"),
}


def load(kind: str, path: str | Path, sets: list[str] | None = None):
    """The validated job of a job file of this kind with the ``--set`` items applied; raises JobError."""
    from loopfree_platform.jobfile import overrides, parse_sets

    module, name = LOADERS[kind]
    loader = getattr(importlib.import_module(module), name)
    with overrides(parse_sets(sets)):
        return loader(path)


def plan(kind: str, job) -> dict:
    """What ``--dry-run`` prints: the job with every default filled in (for a sweep, its runs)."""
    if kind == "distill":
        return job.resolved()
    if kind == "sweep":
        sweep, runs = job
        return {"sweep": sweep.model_dump(mode="json"),
                "runs": [{"name": j.name, "variant": name, "seed": seed, "method": j.resolved()["method"]}
                         for name, seed, j in runs]}
    return job.model_dump(mode="json")


def print_plan(kind: str, job) -> int:
    import yaml

    from loopfree_platform.jobfile import redact

    print(yaml.safe_dump(redact(plan(kind, job)), sort_keys=False), end="")
    return 0


def _error(message: str) -> None:
    for line in message.splitlines():
        print(line if line[:1].isspace() else f"error: {line}", file=sys.stderr)


def _job(kind: str, args: argparse.Namespace):
    """The validated job, or None after printing the error: bad files fail here, before any cluster work."""
    from loopfree_platform.jobfile import JobError

    try:
        return load(kind, args.job, args.set)
    except JobError as err:
        _error(str(err))
        return None


def _quietly(args: argparse.Namespace, log, desc: str, unit: str, run, expected: tuple = ()):
    """(run(bar), None) with the console quiet (the chatter to `log`) and the command's progress bar `bar`,
    or (None, exit code) after a failure: 2 and its message for an `expected` error, else 1 with its first
    lines and the log's path (the traceback is in the log; with --verbose it is raised as usual)."""
    from loopfree_platform.console import Progress, quiet
    from loopfree_platform.runtime import release_ray

    try:
        with quiet(log, args.verbose, f"{args.command} {args.job}", release=release_ray), \
                Progress(desc, unit=unit) as bar:
            return run(bar), None
    except expected as err:
        _error(str(err))
        return None, 2
    except Exception as err:
        if args.verbose:
            raise
        import re

        lines = [line.rstrip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines() if line.strip()]
        lines = lines or [""]  # first and last line: Ray's wrapped errors end with the cause (TypeError: ...)
        _error(f"{type(err).__name__}: {lines[0][:300]}" + (f"\n  ... {lines[-1][:300].strip()}" if len(lines) > 1 else ""))
        print(f"full traceback in the log: {log.shown()}", file=sys.stderr)
        return None, 1


def _log_line(args: argparse.Namespace, log) -> None:
    if not args.verbose:
        print(f"log: {log.shown()}")


def _distill(args: argparse.Namespace) -> int:
    job = _job("distill", args)  # every check that needs no cluster happens here, before Ray starts
    if job is None:
        return 2
    if args.dry_run:
        return print_plan("distill", job)
    from loopfree_platform.console import LogFile, duration
    from loopfree_platform.distill.driver import run_distill
    from loopfree_platform.distill.lease import RunLeaseError

    log = LogFile.under(job.run_dir(), "driver.log", job.storage.endpoint_url, job.name)
    start = time.perf_counter()
    out, code = _quietly(args, log, "distill", "step",
                         lambda bar: (run_distill(job, address=args.address, progress=bar), bar.throughput),
                         expected=(RunLeaseError,))
    if code is not None:
        return code
    result, throughput = out
    shown = ", ".join(f"{k} {result.metrics[k]:.3g}" for k in ("loss_vsd", "loss_fake_score", "eval/fid")
                      if isinstance(result.metrics.get(k), (int, float)))
    speed = f", {throughput * job.scaling.global_batch_size:.2f} samples/s" if throughput else ""
    print(f"distilled {result.steps} steps in {duration(time.perf_counter() - start)}{speed}"
          + (f"; final {shown}" if shown else ""))
    c = result.corpus
    print(f"corpus: {c['unique']} prompts of {c['records']} records ({c['bad']} bad, {c['empty']} empty, "
          f"{c['duplicates']} duplicates)")
    print(f"exported TiUE pipeline: {result.export_dir}")
    for path in result.samples[-1:]:
        print(f"latest sample grid (EMA student): {path}")
    if result.mlflow_run_id:
        print(f"MLflow run {result.mlflow_run_id}; registered model {job.tracking.registered_model} "
              f"version {result.model_version} (alias {job.tracking.alias})")
        if result.mlflow_page:
            print(f"MLflow UI: {result.mlflow_page}")
    _log_line(args, log)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    loaded = _job("sweep", args)  # the sweep and EVERY variant are validated here, before Ray starts
    if loaded is None:
        return 2
    if args.dry_run:
        return print_plan("sweep", loaded)
    from loopfree_platform import storage
    from loopfree_platform.console import LogFile, duration
    from loopfree_platform.distill.driver import absolute_paths, run_steps, step_bar
    from loopfree_platform.distill.sweep import tables
    from loopfree_platform.distill.sweep_driver import run_sweep

    sweep, runs = loaded
    first = runs[0][2]
    endpoint = first.storage.endpoint_url
    log = LogFile.under(storage.join(first.storage.path, sweep.name), "driver.log", endpoint, sweep.name)

    def run(bar):
        from loopfree_platform.distill.callbacks import MetricsFeed, read_metrics

        jobs = [absolute_paths(job) for _, _, job in runs]
        uris = [storage.join(job.run_dir(), "metrics.jsonl") for job in jobs]
        logged = [max((int(r["step"]) for r in read_metrics(u, endpoint)), default=0) for u in uris]
        bar.phase(f"{len(runs)} runs: starting")
        with MetricsFeed(uris, endpoint, step_bar(bar, lambda: [run_steps(job) for job in jobs], None, logged)):
            result = run_sweep(sweep, runs, address=args.address)
        return result

    start = time.perf_counter()
    result, code = _quietly(args, log, "sweep", "step", run)
    if code is not None:
        return code
    print(tables(result.rows)[0], end="")
    print(f"{len(result.rows)} runs in {duration(time.perf_counter() - start)}; summary: {result.markdown} and "
          f"{result.csv}" + (f"; MLflow parent run {result.parent_run_id}" if result.parent_run_id else ""))
    _log_line(args, log)
    return 0


def _submit(args: argparse.Namespace) -> int:
    """Validate the job as the cluster will see it (paths relative to the uploaded folder), then submit the
    same `loopfree <kind>` command as the job's entrypoint."""
    import contextlib

    from loopfree_platform import submit as jobs
    from loopfree_platform.jobfile import JobError

    working_dir = Path(args.working_dir)
    if not working_dir.is_dir():
        _error(f"--working-dir {args.working_dir}: not a directory")
        return 2
    with contextlib.chdir(working_dir):
        kind = args.kind or jobs.detect_kind(args.job)
        if kind is None:
            if not Path(args.job).is_file():
                _error(f"job file {args.job} does not exist (under --working-dir {args.working_dir})")
            else:
                _error(f"{args.job}: cannot tell the job kind from its keys; give --kind ({', '.join(jobs.KINDS)})")
            return 2
        try:
            job = load(kind, args.job, args.set)
            if kind == "distill":
                from loopfree_platform.distill.job import check_submitted

                check_submitted(job, upload=working_dir.resolve())  # what the job will refuse on the cluster
        except JobError as err:
            _error(str(err) if str(err).startswith(args.job) else f"{args.job}: {err}")
            return 2
    command = jobs.entrypoint(kind, args.job, args.set or [], verbose=args.verbose)
    if args.dry_run:
        print_plan(kind, job)
        print(f"would submit: {command} (working dir {working_dir.resolve()})", file=sys.stderr)
        return 0
    return jobs.submit(command, address=args.address, wait=not args.no_wait, working_dir=args.working_dir,
                       verbose=args.verbose)


def _evaluate(args: argparse.Namespace) -> int:
    job = _job("evaluate", args)  # bad keys and missing paths fail here, before Ray starts
    if job is None:
        return 2
    if args.dry_run:
        return print_plan("evaluate", job)
    from loopfree_platform.console import LogFile, duration
    from loopfree_platform.evaluate.driver import run_evaluate

    log = LogFile.under(str(job.out_dir()), "evaluate.log", name=job.name)
    start = time.perf_counter()
    out, code = _quietly(args, log, "evaluate", "img", lambda bar: run_evaluate(job, address=args.address))
    if code is not None:
        return code
    results, files, run_id = out
    print(files["markdown"].read_text(), end="")
    print(f"{len(results)} systems in {duration(time.perf_counter() - start)}; results: {files['markdown']} and "
          f"{files['csv']}" + (f"; MLflow run {run_id}" if run_id else ""))
    _log_line(args, log)
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


def _serve(args: argparse.Namespace) -> int:
    job = _job("serve", args)  # a bad job file (or a missing model directory) fails before Ray starts
    if job is None:
        return 2
    from loopfree_platform.jobfile import JobError
    from loopfree_platform.serve.job import check_token

    try:
        check_token(job, args.job)  # the token lives in this shell's environment: check it before Ray starts
    except JobError as err:
        _error(str(err))
        return 2
    if args.dry_run:
        return print_plan("serve", job)
    from loopfree_platform.serve.monitor import run_serve

    return run_serve(job, args.job, args.address, args.verbose)  # quiet console, traffic lines, serve.log


def _generate(args: argparse.Namespace) -> int:
    job = _job("generate", args)  # bad keys, a missing prompt file or model fail before Ray starts
    if job is None:
        return 2
    if args.dry_run:
        return print_plan("generate", job)
    from loopfree_platform.console import LogFile, duration
    from loopfree_platform.serve.generate import GenerateError, run_generate

    log = LogFile.under(job.output.root, "generate.log", job.output.endpoint_url, job.name)
    result, code = _quietly(args, log, "generate", "img", lambda bar: run_generate(job, address=args.address),
                            expected=(GenerateError,))
    if code is not None:
        return code
    rate = f", {result.generated / result.seconds:.2f} img/s" if result.generated and result.seconds else ""
    print(f"{result.generated} images generated, {result.skipped} already done, in {duration(result.seconds)}{rate}; "
          f"{result.total} in {result.manifest} (model {result.model_version})")
    _log_line(args, log)
    return 0


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("loopfree")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _reach_ray(address: str | None, timeout: float) -> dict:
    """Whether a Ray cluster answers at RAY_ADDRESS (a dashboard URL, ray://host:port or a GCS host:port)."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    if not address:
        return {"address": "not set (RAY_ADDRESS)"}
    if address == "auto":
        return {"address": address, "reachable": "not checked (the machine's running cluster)"}
    try:
        if address.startswith(("http://", "https://")):
            with urllib.request.urlopen(address.rstrip("/") + "/api/version", timeout=timeout) as response:
                return {"address": address, "reachable": True, "detail": f"dashboard, HTTP {response.status}"}
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=timeout):
            return {"address": address, "reachable": True, "detail": "TCP connection accepted"}
    except Exception as err:  # refused, timed out, bad address: all mean "not reachable" here
        return {"address": address, "reachable": False, "detail": f"{type(err).__name__}: {err}"}


def _reach_mlflow(uri: str | None, timeout: float) -> dict:
    """Whether the MLflow tracking server at MLFLOW_TRACKING_URI answers /health (credentials never printed)."""
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    from loopfree_platform.jobfile import redact, redact_text

    if not uri:
        return {"tracking_uri": "not set (MLFLOW_TRACKING_URI)"}
    shown = redact(uri)
    if not uri.startswith(("http://", "https://")):
        return {"tracking_uri": shown, "reachable": "a local store, no server"}
    parts = urlsplit(uri)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            return {"tracking_uri": shown, "reachable": True, "detail": f"HTTP {response.status}"}
    except Exception as err:
        return {"tracking_uri": shown, "reachable": False, "detail": redact_text(f"{type(err).__name__}: {err}")}


def _env(args: argparse.Namespace) -> int:
    """Versions, devices, and whether RAY_ADDRESS and MLFLOW_TRACKING_URI answer (short timeouts)."""
    import os
    from importlib import metadata

    import yaml

    packages = {}
    for name in ("torch", "ray", "deepspeed", "diffusers", "transformers", "mlflow"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    devices: dict = {"cpus": os.cpu_count()}
    try:
        import torch

        devices["cuda"] = torch.cuda.is_available()
        if devices["cuda"]:
            devices["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        devices["cuda"] = "torch not installed"
    report = {"loopfree": _version(), "python": sys.version.split()[0], "packages": packages, "devices": devices,
              "ray": _reach_ray(os.environ.get("RAY_ADDRESS"), args.timeout),
              "mlflow": _reach_mlflow(os.environ.get("MLFLOW_TRACKING_URI"), args.timeout)}
    print(yaml.safe_dump(report, sort_keys=False, width=1000), end="")
    return 0


def _job_command(sub, name: str, help: str, example: str, run: bool = True) -> argparse.ArgumentParser:
    """A job command: JOB, --set (repeatable), --dry-run, --address and, for runs, --verbose."""
    parser = sub.add_parser(name, help=help)
    parser.add_argument("job", help=f"job file, e.g. {example}")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a key of the job file before validation, the value parsed as YAML "
                             "(repeatable), e.g. --set training.max_steps=20")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved job (YAML), run nothing")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    if run:
        parser.add_argument("--verbose", action="store_true",
                            help="show Ray's, the workers' and the libraries' output on the terminal, not in the log file")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopfree", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"loopfree {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="generate an image grid with a TiUE pipeline on the tiny preset")
    demo.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    demo.add_argument("--preset", default="tiny", choices=["tiny"], help="model preset (random weights)")
    demo.add_argument("--num-steps", type=int, default=4, help="K decoder timesteps (default 4)")
    demo.add_argument("--seed", type=int, default=0, help="first seed; image i uses seed+i")
    demo.set_defaults(func=_demo)
    _job_command(sub, "distill", "run a distillation job file (local Ray instance unless --address)",
                 "jobs/smoke.yaml").set_defaults(func=_distill)
    _job_command(sub, "sweep", "run a sweep job file: variants of a distillation job as Ray Tune trials "
                 "(--set applies to the sweep file)", "jobs/sweep_quickstart.yaml").set_defaults(func=_sweep)
    submit = _job_command(sub, "submit", "submit a job file of any kind (distill, sweep, evaluate, generate) to a "
                          "Ray cluster through the Jobs API; waits and streams its output", "jobs/smoke.yaml")
    submit.set_defaults(func=_submit)
    for action in submit._actions:
        if action.dest == "address":
            action.help = "Ray dashboard address (default: RAY_ADDRESS or http://127.0.0.1:8265)"
        elif action.dest == "job":
            action.help = "job file, relative to --working-dir (validated there, as the cluster will see it)"
        elif action.dest == "verbose":
            action.help = "run the job with --verbose (Ray's output in the job's log, not a log file)"
    submit.add_argument("--kind", choices=["distill", "sweep", "evaluate", "generate"], default=None,
                        help="the job kind (default: told by the file's keys)")
    submit.add_argument("--working-dir", default=".", help="uploaded as the job's working directory (default: .)")
    submit.add_argument("--no-wait", action="store_true", help="submit and return; do not stream the job's output")
    submit.add_argument("--follow", action="store_true", help=argparse.SUPPRESS)  # the old opt-in; waiting is the default
    _job_command(sub, "evaluate", "run an evaluation job file: FID, CLIP, PRDC table (jobs/evaluate.yaml)",
                 "jobs/evaluate.yaml").set_defaults(func=_evaluate)
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
    _job_command(sub, "serve", "serve a TiUE model over HTTP with Ray Serve (jobs/serve.yaml)",
                 "jobs/serve.yaml").set_defaults(func=_serve)
    _job_command(sub, "generate", "batch-generate images for a prompt file with Ray Data (jobs/generate.yaml); "
                 "re-running skips what is done", "jobs/generate.yaml").set_defaults(func=_generate)
    env = sub.add_parser("env", help="versions, devices, and whether RAY_ADDRESS and MLFLOW_TRACKING_URI are reachable")
    env.add_argument("--timeout", type=float, default=3.0, help="seconds per reachability check (default 3)")
    env.set_defaults(func=_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from loopfree_platform.runtime import shipped_code_warning

    warning = shipped_code_warning()  # a submitted job running other code than it uploaded says so
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
