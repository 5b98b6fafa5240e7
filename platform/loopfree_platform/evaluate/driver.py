"""Driver of an evaluation job: read the prompts, start Ray, compute the reference, evaluate every system,
write the tables and log to MLflow. The Ray Data stages are in `stages`, the tables in `report`.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from loopfree.evaldata import read_prompts, select
from loopfree.seeds import span_error
from loopfree_platform.console import active, say
from loopfree_platform.evaluate.job import EvaluateJob
from loopfree_platform.evaluate.report import log_results, open_run, write_tables
from loopfree_platform.evaluate.stages import SystemResult, evaluate_system, reference
from loopfree_platform.jobfile import JobError
from loopfree_platform.runtime import ensure_ray


def run_evaluate(job: EvaluateJob, address: str | None = None) -> tuple[list[SystemResult], dict[str, Path], str | None]:
    """Evaluate every system of the job; returns (results, written files, MLflow run id or None)."""
    job = job.with_absolute_paths()
    prompts = select(read_prompts(job.prompts.path, job.prompts.format), job.prompts.limit, job.prompts.seed)
    if error := span_error("seed", job.seed, len(prompts)):  # image i of every system uses seed + i
        raise JobError(error)
    if job.metrics.clip_dir is None:
        say("CLIP score skipped: no metrics.clip_dir (a local transformers CLIPModel folder) was given")
    run = open_run(job)  # before Ray: a tracking server that does not answer fails here
    try:
        results, files = _evaluate(job, prompts, address)
    except BaseException:
        if run:
            with contextlib.suppress(Exception):  # the evaluation's own error is the one to see
                run.end("FAILED")
        raise
    if run:
        log_results(run, job, results)
    return results, files, run.run_id if run else None


def _evaluate(job: EvaluateJob, prompts: list, address: str | None) -> tuple[list[SystemResult], dict[str, Path]]:
    bar = active()  # the command's bar: every stage's images on one count
    bar.plan(len(prompts) * len(job.systems))
    bar.phase("starting Ray")
    ensure_ray(address)
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True  # features stay in prompt order
    ref = reference(job)
    if job.metrics.prdc and ref.features is None:
        say("PRDC skipped: the saved reference statistics hold no features")
    results = []
    for system in job.systems:
        results.append(evaluate_system(job, system, prompts, ref))
        bar.show(systems=f"{len(results)}/{len(job.systems)}", last_FID=results[-1].fid)
    bar.phase("writing the tables")
    return results, write_tables(job, results, len(prompts))
