"""The `loopfree` command. Entry points stay thin: parse, validate, build, run, close.

Every job command (distill, sweep, evaluate, serve, generate, submit) works one way: the job file is read
as YAML, ``--set section.key=value`` overrides (the value parsed as YAML) are applied to it, and the whole
job is validated before any cluster work: a bad file exits 2 with ``error: <file>: <key>: ...``;
``--dry-run`` prints the resolved job as YAML. A run shows one progress bar (stderr) and a short summary
(stdout); what Ray, its workers, DeepSpeed and MLflow print goes to the run's log file (``--verbose``
keeps it on the terminal). The commands are the table `JOBS`; what each one runs is in `commands`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loopfree_platform import commands, environment


@dataclass(frozen=True)
class JobCommand:
    help: str
    example: str
    loader: str  # "module:function": job file -> validated job; raises JobError naming the file and the key
    work: Callable | None = None  # (job, args) -> commands.Work: run under the bar in the quiet console
    direct: Callable | None = None  # (job, args) -> exit code: a command with its own console (serve)
    check: Callable | None = None  # (job, args): checks of this shell's environment, before --dry-run too


JOBS = {
    "distill": JobCommand("run a distillation job file (local Ray instance unless --address)", "jobs/smoke.yaml",
                          "loopfree_platform.distill.job:load_job", work=commands.distill),
    "sweep": JobCommand("run a sweep job file: variants of a distillation job as Ray Tune trials (--set applies to "
                        "the sweep file)", "jobs/sweep_quickstart.yaml", "loopfree_platform.distill.sweep:load_sweep",
                        work=commands.sweep),
    "evaluate": JobCommand("run an evaluation job file: FID, CLIP, PRDC table (jobs/evaluate.yaml)", "jobs/evaluate.yaml",
                           "loopfree_platform.evaluate.job:load_eval_job", work=commands.evaluate),
    "serve": JobCommand("serve a TiUE model over HTTP with Ray Serve (jobs/serve.yaml)", "jobs/serve.yaml",
                        "loopfree_platform.serve.job:load_serve_job", direct=commands.serve, check=commands.check_serve),
    "generate": JobCommand("batch-generate images for a prompt file with Ray Data (jobs/generate.yaml); re-running "
                           "skips what is done", "jobs/generate.yaml", "loopfree_platform.serve.job:load_generate_job",
                           work=commands.generate),
}
# Commands without a job file: name -> (help, add its arguments, run)
TOOLS = {
    "demo": ("generate an image grid with a TiUE pipeline on the tiny preset", commands.add_demo_arguments, commands.demo),
    "analyze-features": ("encoder vs decoder feature similarity between adjacent teacher sampling steps (CSV + PNG)",
                         commands.add_analyze_arguments, commands.analyze_features),
    "env": ("versions, devices, and whether RAY_ADDRESS and MLFLOW_TRACKING_URI are reachable",
            environment.add_arguments, environment.run),
}


def load(kind: str, path: str | Path, sets: list[str] | None = None):
    """The validated job of a job file of this kind with the ``--set`` items applied; raises JobError."""
    from loopfree_platform.jobfile import overrides, parse_sets

    module, name = JOBS[kind].loader.split(":")
    loader = getattr(importlib.import_module(module), name)
    with overrides(parse_sets(sets)):
        return loader(path)


def plan(kind: str, job) -> dict:
    """What ``--dry-run`` prints: the job with every default filled in (for a sweep, its runs)."""
    if kind == "sweep":
        sweep, runs = job
        return {"sweep": sweep.model_dump(mode="json"),
                "runs": [{"name": j.name, "variant": name, "seed": seed, "method": j.resolved()["method"]}
                         for name, seed, j in runs]}
    return job.model_dump(mode="json")  # a distillation job's method included, every default filled in


def print_plan(kind: str, job) -> int:
    import yaml

    from loopfree_platform.jobfile import redact

    print(yaml.safe_dump(redact(plan(kind, job)), sort_keys=False), end="")
    return 0


def _error(message: str) -> None:
    for line in message.splitlines():
        print(line if line[:1].isspace() else f"error: {line}", file=sys.stderr)


def _run_job(args: argparse.Namespace) -> int:
    """The opening every job command shares: load and validate (a bad file exits 2, before any cluster work),
    the command's own checks, --dry-run; then the run in the quiet console and its summary."""
    from loopfree_platform.jobfile import JobError

    command = JOBS[args.command]
    try:
        job = load(args.command, args.job, args.set)
        if command.check:
            command.check(job, args)
    except JobError as err:
        _error(str(err))
        return 2
    if args.dry_run:
        return print_plan(args.command, job)
    if command.direct:
        return command.direct(job, args)
    work = command.work(job, args)
    start = time.perf_counter()
    out, code = _quietly(args, work)
    if code is not None:
        return code
    print(work.summary(out, time.perf_counter() - start))
    if not args.verbose:
        print(f"log: {work.log.shown()}")
    return 0


def _quietly(args: argparse.Namespace, work: commands.Work):
    """(what work.run returned, None) with the console quiet (the chatter to the log) and the command's bar, or
    (None, exit code) after a failure: 2 and its message for an expected error, else 1 with its first and last
    lines and the log's path (the traceback is in the log; with --verbose it is raised as usual)."""
    from loopfree_platform.console import Progress, quiet
    from loopfree_platform.runtime import release_ray

    try:
        with quiet(work.log, args.verbose, f"{args.command} {args.job}", release=release_ray), \
                Progress(args.command, unit=work.unit) as bar:
            return work.run(bar), None
    except work.expected as err:
        _error(str(err))
        return None, 2
    except Exception as err:
        if args.verbose:
            raise
        lines = [line.rstrip() for line in re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip().splitlines() if line.strip()]
        lines = lines or [""]  # first and last line: Ray's wrapped errors end with the cause (TypeError: ...)
        _error(f"{type(err).__name__}: {lines[0][:300]}" + (f"\n  ... {lines[-1][:300].strip()}" if len(lines) > 1 else ""))
        print(f"full traceback in the log: {work.log.shown()}", file=sys.stderr)
        return None, 1


def _submit(args: argparse.Namespace) -> int:
    """Validate the job as the cluster will see it (paths relative to the uploaded folder), then submit the
    same `loopfree <kind>` command as the job's entrypoint."""
    from loopfree_platform.jobfile import JobError
    from loopfree_platform.submit import KINDS, detect_kind, entrypoint, submit

    working_dir = Path(args.working_dir)
    if not working_dir.is_dir():
        _error(f"--working-dir {args.working_dir}: not a directory")
        return 2
    with contextlib.chdir(working_dir):
        kind = args.kind or detect_kind(args.job)
        if kind is None:
            where = f"(under --working-dir {args.working_dir})"
            _error(f"job file {args.job} does not exist {where}" if not Path(args.job).is_file() else
                   f"{args.job}: cannot tell the job kind from its keys; give --kind ({', '.join(KINDS)})")
            return 2
        try:
            job = load(kind, args.job, args.set)
            commands.check_submitted(kind, job, working_dir.resolve())  # what the job will refuse on the cluster
        except JobError as err:
            _error(str(err) if str(err).startswith(args.job) else f"{args.job}: {err}")
            return 2
    command = entrypoint(kind, args.job, args.set or [], verbose=args.verbose)
    if args.dry_run:
        print_plan(kind, job)
        print(f"would submit: {command} (working dir {working_dir.resolve()})", file=sys.stderr)
        return 0
    return submit(command, address=args.address, wait=not args.no_wait, working_dir=args.working_dir,
                  verbose=args.verbose)


def _job_parser(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A job command: JOB, --set (repeatable), --dry-run, --address, --verbose."""
    parser = sub.add_parser(name, help=help)
    parser.add_argument("job", help=f"job file, e.g. {example}")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a key of the job file before validation, the value parsed as YAML "
                             "(repeatable), e.g. --set training.max_steps=20")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved job (YAML), run nothing")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    parser.add_argument("--verbose", action="store_true",
                        help="show Ray's, the workers' and the libraries' output on the terminal, not in the log file")
    return parser


def _submit_parser(sub) -> None:
    submit = _job_parser(sub, "submit", "submit a job file of any kind (distill, sweep, evaluate, generate) to a Ray "
                         "cluster through the Jobs API; waits and streams its output", "jobs/smoke.yaml")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopfree", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"loopfree {environment.version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in JOBS.items():
        _job_parser(sub, name, command.help, command.example).set_defaults(func=_run_job)
    _submit_parser(sub)
    for name, (help, add_arguments, run) in TOOLS.items():
        tool = sub.add_parser(name, help=help)
        add_arguments(tool)
        tool.set_defaults(func=run)
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
