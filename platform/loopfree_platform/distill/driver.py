"""Driver of a distillation job: validate, prepare the corpus, run the TorchTrainer, report where things are.

Everything that can fail without a cluster has failed before this runs (`job.load_job`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from loopfree_platform import storage
from loopfree_platform.console import Progress
from loopfree_platform.distill.job import RESOLVED, DistillJob
from loopfree_platform.jobfile import redact
from loopfree_platform.runtime import ensure_ray


@dataclass
class DistillResult:
    run_dir: str
    export_dir: str
    steps: int
    corpus: dict[str, int]
    metrics: dict
    samples: list[str]
    mlflow_run_id: str | None = None
    mlflow_page: str | None = None  # where to look at the run (tracking.Run.page)
    model_version: str | None = None


def absolute_paths(job: DistillJob) -> DistillJob:
    """Workers run in other folders (and on other machines): relative local paths mean the driver's."""
    def fix(p):
        return p if p is None or storage.is_s3(p) else str(Path(p).resolve())
    model = job.model.model_copy(update={"teacher_dir": fix(job.model.teacher_dir), "student_dir": fix(job.model.student_dir)})
    update = {"model": model, "storage": job.storage.model_copy(update={"path": fix(job.storage.path)}),
              "data": job.data.model_copy(update={"paths": [fix(p) for p in job.data.paths]})}
    if job.evaluation:
        ev = job.evaluation
        keys = ("prompts_path", "classifier_dir", "clip_dir", "inception_path", "cache_dir")
        update["evaluation"] = ev.model_copy(update={
            **{k: fix(getattr(ev, k)) for k in keys},
            "reference": ev.reference.model_copy(update={"images": fix(ev.reference.images), "stats": fix(ev.reference.stats)})})
    return job.model_copy(update=update)


def latest_checkpoint_state(job: DistillJob) -> dict | None:
    """state.json of the newest checkpoint in the run folder, if any."""
    try:
        files = storage.list_files(job.run_dir(), job.storage.endpoint_url)
    except FileNotFoundError:
        return None
    states = sorted(f for f in files if "/checkpoint_" in f and f.endswith("/state.json"))
    return json.loads(storage.read_bytes(states[-1], job.storage.endpoint_url)) if states else None


def backfill_trackers(job: DistillJob, callbacks: list) -> None:
    """A job killed between persisting a checkpoint and the trackers' callbacks loses that step's metrics;
    the checkpoint carries them, so a resumed job logs them first (rows are keyed by step)."""
    state = latest_checkpoint_state(job)
    if state and state.get("metrics"):
        for callback in callbacks:
            callback.after_report(None, [state["metrics"]], None)


def capped(job: DistillJob, rows: int) -> DistillJob:
    """The job as it runs: `training.max_steps` capped by the global batches the corpus yields."""
    steps = min(job.training.max_steps, rows // job.scaling.global_batch_size)
    if steps < 1:
        raise ValueError(f"the corpus yields {rows} (prompt, epoch) rows, fewer than one global batch "
                         f"(scaling.global_batch_size = {job.scaling.global_batch_size})")
    return job.model_copy(update={"training": job.training.model_copy(update={"max_steps": steps})})


def run_steps(job: DistillJob) -> int:
    """The steps of a run once its driver has capped them (its job.resolved.yaml), else the job's own."""
    uri = storage.join(job.run_dir(), RESOLVED)
    try:
        return int(yaml.safe_load(storage.read_bytes(uri, job.storage.endpoint_url))["training"]["max_steps"])
    except Exception:  # not written yet (or being replaced): the job's value until it is
        return job.training.max_steps


def step_bar(progress: Progress, totals: Callable[[], list[int]], batch: int | None, after: list[int]):
    """on_rows for `MetricsFeed`: the bar counts reported steps of one run (or of a sweep's runs, summed, each
    run's total its capped step count once its driver has it) from the first step after `after` (the steps an
    earlier attempt already logged), with the main losses, the latest eval/fid, samples/s (one run) or runs
    done (a sweep) as its postfix."""
    started = False

    def on_rows(tables: list[list[dict]]) -> None:
        nonlocal started
        limits = totals()
        steps = [min(max((int(r["step"]) for r in rows), default=0), total) for rows, total in zip(tables, limits)]
        if not started:
            if all(s <= a for s, a in zip(steps, after)):
                return
            progress.start(sum(limits), done=sum(steps))
            started = True
        progress.retotal(sum(limits))
        progress.to(sum(steps))
        running = [t for t, s, total in zip(tables, steps, limits) if t and s < total]
        rows = (running or [t for t in tables if t] or [[]])[0]  # the run in progress (a sweep's first unfinished)
        last = rows[-1] if rows else {}
        fid = next((r["eval/fid"] for r in reversed(rows) if "eval/fid" in r), None)
        shown = {k: last.get(k) for k in ("loss_vsd", "loss_sid", "loss_fake_score")}  # loss_sid: method.student_loss sid
        shown["eval/fid"] = fid
        if batch is not None:
            shown["samples/s"] = progress.rate * batch if progress.rate else None
        else:
            shown["runs"] = f"{sum(s >= t for s, t in zip(steps, limits))}/{len(limits)}"
        progress.show(**shown)

    return on_rows


def run_distill(job: DistillJob, address: str | None = None, progress: Progress | None = None) -> DistillResult:
    """Run a distillation job; `progress` (the command's bar) shows its phases and steps. One driver per run
    name: a second one refuses (RunLeaseError) before it starts MLflow or Ray."""
    from loopfree_platform.distill.lease import RunLease

    job = absolute_paths(job)
    with RunLease(job.run_dir(), job.storage.endpoint_url):
        return _run_distill(job, address, progress)


def _run_distill(job: DistillJob, address: str | None, progress: Progress | None) -> DistillResult:
    from loopfree_platform.distill.callbacks import MetricsFeed, MetricsLog, read_metrics
    from loopfree_platform.distill.corpus import prepare_corpus
    from loopfree_platform.distill.pairs import prepare_teacher_pairs
    from loopfree_platform.distill.tracking import MLflowTracking, describe_run, register_model, start_run

    progress = progress or Progress("distill", enabled=False)
    if job.tracking.enabled:
        progress.phase("starting the MLflow run")
    tracked = start_run(job) if job.tracking.enabled else None  # an unreachable server fails here, before Ray
    progress.phase("starting Ray")
    ensure_ray(address)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False  # travels with the datasets to the workers
    endpoint = job.storage.endpoint_url
    d = job.data
    progress.phase("preparing the corpus")
    ordered, stats = prepare_corpus(d.paths, d.format, d.column, d.on_bad_record, d.epochs, d.seed, endpoint)
    print(f"corpus: {stats.as_dict()}", flush=True)
    job = capped(job, ordered.count())  # from here on the job is the run's: absolute paths, capped steps
    steps = job.training.max_steps
    storage.write_bytes(storage.join(job.run_dir(), RESOLVED), yaml.safe_dump(redact(job.resolved()), sort_keys=False).encode(),
                        endpoint)
    if tracked:
        describe_run(job, tracked)
    prepare_teacher_pairs(job, ordered, stats.unique, progress)  # method.regression_weight > 0 only
    callbacks = [MetricsLog(job.run_dir(), endpoint), *([MLflowTracking(job, tracked)] if tracked else [])]
    backfill_trackers(job, callbacks)
    trainer = _trainer(job, ordered, callbacks)
    progress.phase("starting the workers")
    metrics_uri = storage.join(job.run_dir(), "metrics.jsonl")
    logged = max((int(r["step"]) for r in read_metrics(metrics_uri, endpoint)), default=0)
    with MetricsFeed([metrics_uri], endpoint, step_bar(progress, lambda: [steps], job.scaling.global_batch_size, [logged])):
        result = trainer.fit()
    if result.error:
        raise result.error
    samples = _list(storage.join(job.run_dir(), "samples"), endpoint)
    export_dir = storage.join(job.run_dir(), "export")
    if tracked:
        progress.phase("logging the model to MLflow")
    version = register_model(job, tracked, export_dir) if tracked else None
    progress.phase()  # done: the bar ends as "distill: 100%|...", not on the last phase
    return DistillResult(run_dir=job.run_dir(), export_dir=export_dir, steps=steps, corpus=stats.as_dict(),
                         metrics=dict(result.metrics or {}), samples=samples, mlflow_run_id=tracked.run_id if tracked else None,
                         mlflow_page=tracked.page() if tracked else None, model_version=version)


def _trainer(job: DistillJob, ordered, callbacks: list):
    """Ray Train's trainer for the run: the workers, their storage and failure policy, the corpus's rank shards."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from loopfree_platform.distill.corpus import RankShards
    from loopfree_platform.distill.process_group import NodeAddressTorchConfig
    from loopfree_platform.distill.train import train_loop_per_worker

    fs, storage_path = storage.filesystem(job.storage.path, job.storage.endpoint_url)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},  # the validated job itself: the workers re-derive nothing
        torch_config=NodeAddressTorchConfig(),  # torch's rendezvous store on the node's address, not on '::'
        scaling_config=ScalingConfig(num_workers=job.scaling.num_workers, use_gpu=job.scaling.use_gpu,
                                     resources_per_worker={"CPU": job.scaling.cpus_per_worker}),
        run_config=RunConfig(name=job.name, storage_path=storage_path,
                             storage_filesystem=fs if storage.is_s3(job.storage.path) else None,
                             failure_config=FailureConfig(max_failures=job.checkpoint.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=job.checkpoint.num_to_keep),
                             callbacks=callbacks),
        datasets={"train": ordered},
        # Each worker streams only its own slice of every global batch (corpus.py, "Sharding").
        dataset_config=RankShards(job.scaling.batch_per_worker, job.scaling.global_batch_size, job.training.max_steps),
    )


def _list(uri: str, endpoint: str | None) -> list[str]:
    try:
        return storage.list_files(uri, endpoint)
    except FileNotFoundError:
        return []

