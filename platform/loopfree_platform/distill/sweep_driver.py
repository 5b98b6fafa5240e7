"""Run a sweep (`loopfree_platform.distill.sweep`): one Ray Tune trial per variant, each driving its own
Ray Train run through `run_distill`, all under one MLflow parent run; then the summary table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loopfree_platform import storage
from loopfree_platform.console import Progress
from loopfree_platform.distill.callbacks import MetricsFeed, read_metrics
from loopfree_platform.distill.driver import absolute_paths, run_distill, run_steps, step_bar
from loopfree_platform.distill.job import DistillJob
from loopfree_platform.distill.sweep import SweepJob, summary_row, tables
from loopfree_platform.runtime import ensure_ray
from loopfree_platform.tracking import Run, open_run


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]
    markdown: str  # URI of summary.md
    csv: str  # URI of summary.csv
    parent_run_id: str | None


def _run_variant(job: DistillJob) -> None:
    run_distill(job)


def _trial(config: dict, runs: list[dict]) -> None:
    """One Tune trial: a whole distillation job (its own corpus, TorchTrainer and MLflow run). The job runs in
    a task outside the trial's placement group: Tune captures a trial's child tasks into its small bundle by
    default, where the corpus's Ray Data tasks would never fit."""
    import ray
    from ray import tune
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    run = runs[config["index"]]
    escape = PlacementGroupSchedulingStrategy(placement_group=None)
    ray.get(ray.remote(_run_variant).options(num_cpus=0, scheduling_strategy=escape, max_retries=0).remote(run["job"]))
    tune.report(summary_row(run["variant"], run["seed"], run["job"]))


def _parent_run(sweep: SweepJob, first: DistillJob) -> Run | None:
    """The sweep's MLflow run, the parent of its variants' runs; an unreachable server fails the sweep here."""
    if not first.tracking.enabled:
        return None
    from loopfree_platform.distill.tracking import tracking_uri

    return open_run(tracking_uri(first), first.tracking.experiment, sweep.name,
                    {"loopfree.sweep": sweep.name, "mlflow.note.content": f"sweep of {sweep.base}"})


def run_sweep(sweep: SweepJob, runs: list[tuple[str, int, DistillJob]], address: str | None = None,
              progress: Progress | None = None) -> SweepResult:
    """Run every variant as a Tune trial; `progress` (the command's bar) counts the steps of all runs."""
    from ray import tune

    runs = [(name, seed, absolute_paths(job)) for name, seed, job in runs]
    progress = progress or Progress("sweep", enabled=False)
    progress.phase(f"{len(runs)} runs: starting")
    ensure_ray(address)
    parent = _parent_run(sweep, runs[0][2])
    if parent:
        runs = [(n, s, j.model_copy(update={"tracking": j.tracking.model_copy(update={"parent_run_id": parent.run_id})}))
                for n, s, j in runs]
    first = runs[0][2]
    sweep_dir = storage.join(first.storage.path, sweep.name)
    space = [{"variant": n, "seed": s, "job": j} for n, s, j in runs]  # the validated jobs, through the object store
    local_tune_dir = Path(first.storage.path if not storage.is_s3(first.storage.path) else "runs").resolve() / sweep.name
    # Trials are indices into the runs: Tune would try to resolve (and expand) values nested in a trial's config.
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trial, runs=space), {"CPU": sweep.cpus_per_trial}),
        param_space={"index": tune.grid_search(list(range(len(space))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=sweep.max_concurrent),
        run_config=tune.RunConfig(name="tune", storage_path=str(local_tune_dir), verbose=0),
    )
    with _feed(progress, [job for _, _, job in runs]):
        results = tuner.fit()
    errors = [r.error for r in results if r.error]
    rows = [summary_row(n, s, j) for n, s, j in runs]
    markdown, csv_text = tables(rows)
    endpoint = first.storage.endpoint_url
    md_uri, csv_uri = storage.join(sweep_dir, "summary.md"), storage.join(sweep_dir, "summary.csv")
    storage.write_bytes(md_uri, markdown.encode(), endpoint)
    storage.write_bytes(csv_uri, csv_text.encode(), endpoint)
    if parent:
        _log_parent(parent, rows, markdown, csv_text)
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(runs)} sweep trials failed; first: {errors[0]}")
    return SweepResult(rows, md_uri, csv_uri, parent.run_id if parent else None)


def _feed(progress: Progress, jobs: list[DistillJob]) -> MetricsFeed:
    """The bar follows every run's metrics.jsonl, each run's total its capped step count once its driver has it."""
    endpoint = jobs[0].storage.endpoint_url
    uris = [storage.join(job.run_dir(), "metrics.jsonl") for job in jobs]
    logged = [max((int(r["step"]) for r in read_metrics(u, endpoint)), default=0) for u in uris]
    return MetricsFeed(uris, endpoint, step_bar(progress, lambda: [run_steps(job) for job in jobs], None, logged))


def _log_parent(parent: Run, rows: list[dict[str, Any]], markdown: str, csv_text: str) -> None:
    """The summary as artifacts of the parent run, and the best final FID as its metric."""
    import math

    parent.log_text(markdown, "summary.md")
    parent.log_text(csv_text, "summary.csv")
    finals = [r["final_fid"] for r in rows if not math.isnan(r["final_fid"])]
    if finals:
        parent.log_metrics([("eval/best_final_fid", min(finals), 0)])
    parent.end()
