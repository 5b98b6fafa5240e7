"""Where the time of `loopfree distill jobs/quickstart.yaml` goes: one timed run of the real command.

Runs the CLI in this process (`loopfree_platform.cli.main`, the same code path as the console script) with
timers around its phases, and prints one line per phase, "phase X took N s", to the run's driver.log. The
driver's phases come from the command's progress bar; inside the Ray Train workers the loop of
`loopfree_platform.distill.train` is wrapped (imports, models, engines, evaluator, each evaluation, step,
sample grid, report and checkpoint, export). Nothing in the platform changes; timers only.

    python -m benchmarks.quickstart_time --set name=qs-timing-1 --set storage.path=/tmp/qs-timing \
        --set training.max_steps=60          # the split as a table on stdout, events in <run>/timing.jsonl
"""

from __future__ import annotations

import time

T_PROCESS = time.time()  # before the heavy imports: the command's own start-up counts

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def _recorder(path: str, who: str):
    """record(phase, start, end): one JSON line in `path` and one "phase X took N s" line on stdout."""
    def record(phase: str, start: float, end: float, quiet: bool = False) -> None:
        with open(path, "a") as f:
            f.write(json.dumps({"who": who, "phase": phase, "start": start, "seconds": end - start}) + "\n")
        if not quiet:
            print(f"phase {phase} took {end - start:.1f} s ({who})", flush=True)
    return record


def _timed(record, phase: str, fn, quiet: bool = False):
    def wrapper(*args, **kwargs):
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            record(phase, t0, time.time(), quiet)
    return wrapper


def timed_loop_factory(path: str):
    """The worker function: the platform's loop with timers around its parts (pickled by value from __main__)."""
    def timed_loop(loop_config: dict) -> None:
        t_enter = time.time()
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        record = _recorder(path, f"rank{rank}")
        record("worker: enter the train function", T_FIT[0], t_enter)
        t0 = time.time()
        from loopfree_platform.distill import checkpoint, evaluation
        from loopfree_platform.distill import train as T
        record("worker: import the training modules", t0, time.time())
        steps: list[float] = []
        train_iteration = T.train_iteration

        def iteration(*args, **kwargs):
            t = time.time()
            out = train_iteration(*args, **kwargs)
            steps.append(time.time() - t)
            return out

        T.train_iteration = iteration
        T.build_components = _timed(record, "worker: load the teacher (models)", T.build_components)
        T.build_engines = _timed(record, "worker: DeepSpeed engines", T.build_engines)
        evaluator = evaluation.TrainingEvaluator
        evaluator.__init__ = _timed(record, "worker: evaluator (Inception, classifier, reference features)",
                                    evaluator.__init__)
        evaluator.__call__ = _timed(record, "worker: evaluation", evaluator.__call__)
        T._write_samples = _timed(record, "worker: sample grid", T._write_samples)
        checkpoint.save = _timed(record, "worker: checkpoint save (local)", checkpoint.save)
        report = ray.train.report
        ray.train.report = lambda metrics, checkpoint=None, **kw: _timed(
            record, "worker: report with checkpoint" if checkpoint else "worker: report", report, quiet=not checkpoint)(
            metrics, checkpoint=checkpoint, **kw)
        t_loop = time.time()
        try:
            T.train_loop_per_worker(loop_config)
        finally:
            if steps:
                record(f"worker: {len(steps)} steps (median {statistics.median(steps):.2f} s)", t_loop,
                       t_loop + sum(steps))
            record("worker: whole train function", t_enter, time.time())
    T_FIT = [time.time()]  # the driver's clock at trainer.fit (set there, before the function is pickled)
    return timed_loop, T_FIT


def patch_driver(path: str) -> None:
    """Timers in this process: the bar's phases, the worker function, Ray's shutdown."""
    from loopfree_platform import console, runtime
    from loopfree_platform.distill import train
    from ray.train.torch import TorchTrainer

    record = _recorder(path, "driver")
    state = {"phase": "command start (imports, job validation)", "t": T_PROCESS}
    phase = console.Progress.phase

    def timed_phase(self, text: str = "") -> None:
        now = time.time()
        if text != state["phase"]:
            record(state["phase"] or "training (first counted step to the end of trainer.fit)", state["t"], now)
            state.update(phase=text, t=now)
        phase(self, text)

    console.Progress.phase = timed_phase
    loop, t_fit = timed_loop_factory(path)
    train.train_loop_per_worker = loop
    fit_timed = _timed(record, "trainer.fit", TorchTrainer.fit)

    def fit(self, *a, **k):
        t_fit[0] = time.time()
        return fit_timed(self, *a, **k)

    TorchTrainer.fit = fit
    runtime.release_ray = _timed(record, "Ray shutdown", runtime.release_ray)


def summarise(path: str, t_end: float) -> list[str]:
    """The split as Markdown rows: driver phases and rank 0's parts, in seconds and as fractions of the command."""
    events = [json.loads(line) for line in Path(path).read_text().splitlines()]
    total = t_end - T_PROCESS
    groups: dict[str, list[float]] = {}
    for e in events:
        if e["who"] in ("driver", "rank0"):
            groups.setdefault(f"{e['who']}: {e['phase']}", []).append(e["seconds"])
    rows = [f"| {name} | {len(v)} | {sum(v):.1f} | {sum(v) / total:.1%} |" for name, v in groups.items()]
    return ["| phase | count | seconds | share of the command |", "|---|---|---|---|", *rows,
            f"| **whole command** | 1 | **{total:.1f}** | 100% |"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--job", default="jobs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[], help="job override, as for loopfree distill")
    args = ap.parse_args()
    from loopfree_platform.cli import load
    from loopfree_platform.cli import main as cli_main

    argv = ["distill", args.job, *[x for kv in args.set for x in ("--set", kv)]]
    job = load("distill", args.job, args.set)
    Path(job.run_dir()).mkdir(parents=True, exist_ok=True)
    path = str(Path(job.run_dir()) / "timing.jsonl")
    Path(path).unlink(missing_ok=True)
    patch_driver(path)
    code = cli_main(argv)
    print("\n".join(summarise(path, time.time())))
    return code


if __name__ == "__main__":
    sys.exit(main())
