"""What a distillation run records in MLflow (through `loopfree_platform.tracking`, the one module that calls it).

One run per job, fed through one narrow seam (a Ray Train UserCallback on rank 0's reports). The run id is
stored in the job's run folder (``mlflow_run_id``), so a resumed or restarted job logs into the same run.
A tracking server that is unreachable at start fails the job before training (unless ``tracking.optional``);
an outage in the middle of a run only costs metrics (buffered and retried, with a warning), never the training.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

from ray.train import UserCallback

from loopfree_platform import storage, tracking
from loopfree_platform.distill.job import RESOLVED, DistillJob
from loopfree_platform.jobfile import redact, redact_text
from loopfree_platform.tracking import Run, TrackingError, fail_fast, flatten

RUN_ID_FILE = "mlflow_run_id"
MAX_BUFFERED = 10_000
# MLflow's UI sections a run's charts by the prefix before "/": training first, then evaluation, then speed.
PERF_METRICS = {"step_time_s", "samples_per_s", "eta_s", "peak_memory_gb", "data_wait_s_per_step"}
ONCE_METRICS = {"first_batch_s", "worker_startup_s"}  # one value per start: a tag, not a flat 30-point series


def tracking_uri(job: DistillJob) -> str:
    """Job file, then MLFLOW_TRACKING_URI, then a sqlite store in the local runs folder."""
    return tracking.resolve_uri(job.tracking.mlflow_uri, "runs" if storage.is_s3(job.storage.path) else job.storage.path)


def mlflow_key(name: str) -> str:
    """A reported metric's MLflow name: `eval/...` as is, speed and memory under `perf/`, the rest `train/`."""
    if "/" in name:
        return name
    return f"perf/{name}" if name in PERF_METRICS else f"train/{name}"


def describe(job: DistillJob) -> str:
    """The run's description (MLflow shows it on the run page and in the runs table)."""
    cfg = job.method
    teacher = job.model.teacher_dir or f"the random '{job.model.preset}' preset"
    return (f"**{job.name}**: TiUE distillation ({cfg.mode}) of {teacher}. Student: K={cfg.num_steps} decoder "
            f"timesteps ({cfg.spacing} spacing), fake score: {cfg.fake_score}, {cfg.fake_score_updates} fake-score "
            f"update(s) per student update, guidance {cfg.guidance_scale} (teacher) / {cfg.fake_cfg} (fake score), "
            f"weighting {cfg.vsd_weighting}. {job.training.max_steps} steps, global batch "
            f"{job.scaling.global_batch_size} on {job.scaling.num_workers} worker(s), ZeRO-{job.deepspeed.zero_stage} "
            f"{job.deepspeed.precision}.")


def git_commit() -> str | None:
    """The commit of the checkout the platform runs from, if it is one (an uploaded tree is not)."""
    import subprocess

    for where in (Path.cwd(), Path(__file__).resolve().parents[3]):
        try:
            out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                 timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def start_run(job: DistillJob) -> Run | None:
    """The job's existing run when resuming, else a new run; its description and params follow once the run's
    step count is known (`describe_run`). None when the server does not answer and tracking.optional is set."""
    tags = {"loopfree.job": job.name, "mlflow.source.type": "JOB", "mlflow.source.name": f"loopfree distill ({job.name})"}
    commit = git_commit()  # used by a new run only: a resumed run keeps the commit it started from
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if job.tracking.parent_run_id:
        tags["mlflow.parentRunId"] = job.tracking.parent_run_id  # shows as a child in the MLflow UI
    try:
        return tracking.open_run(tracking_uri(job), job.tracking.experiment, job.name, tags,
                                 storage.join(job.run_dir(), RUN_ID_FILE), job.storage.endpoint_url)
    except TrackingError as err:
        if not job.tracking.optional:
            raise
        warnings.warn(f"{err}; tracking.optional is set, training continues without MLflow", stacklevel=2)
        return None


def describe_run(job: DistillJob, run: Run) -> None:
    """The run's description from the job as it runs (its capped step count), and its params once."""
    run.set_tags({"mlflow.note.content": describe(job)})
    run.log_params(flatten(redact(job.resolved())))


class MLflowTracking(UserCallback):
    """Logs rank 0's metrics at their step, and each new sample grid as an image over time."""

    def __init__(self, job: DistillJob, run: Run):
        self.job, self.run = job, run
        self.pending: list[tuple[str, float, int]] = []
        self.once: dict[str, str] = {}  # ONCE_METRICS values not yet set as tags
        self.logged_once: set[str] = set()  # set once per start of the job (a restart measures them anew)

    def after_report(self, run_context, metrics, checkpoint):
        row = metrics[0]
        step = int(row["step"])
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        self.pending += [(mlflow_key(k), float(v), step) for k, v in numbers.items() if k not in ONCE_METRICS]
        self.pending = self.pending[-MAX_BUFFERED:]
        self.once.update({f"perf.{k}": f"{v:.3f}" for k, v in numbers.items() if k in ONCE_METRICS
                          and f"perf.{k}" not in self.logged_once})
        try:
            with fail_fast():
                self.run.log_metrics(self.pending)
                self.pending = []
                if self.once:
                    self.run.set_tags(self.once)
                    self.logged_once |= set(self.once)
                    self.once = {}
                if step and step % self.job.sampling.every_steps == 0:
                    self._log_grid(step)
        except Exception as err:  # noqa: BLE001 - an outage must never stop training
            warnings.warn(f"MLflow logging failed at step {step} ({type(err).__name__}); "
                          f"{len(self.pending)} metric points buffered for retry", stacklevel=2)

    def _log_grid(self, step: int) -> None:
        uri = storage.join(self.job.run_dir(), "samples", f"step_{step:08d}.png")
        if storage.exists(uri, self.job.storage.endpoint_url):
            self.run.log_image(storage.read_bytes(uri, self.job.storage.endpoint_url), key="samples", step=step)


def model_description(job: DistillJob, run: Run, export_dir: str) -> str:
    """The registered version's description: what it is, its K and timesteps, its teacher, its run."""
    config = json.loads(storage.read_bytes(storage.join(export_dir, "model_index.json"), job.storage.endpoint_url))
    return (f"{describe(job)}\n\nDecoder timesteps {config.get('timesteps')}; one encoder pass, K decoder passes "
            f"batched (docs/method.md). MLflow run {run.run_id}; pipeline exported to {export_dir}. Input: a DataFrame "
            "with `prompt` (and optional `seed`); output: `prompt`, `seed`, `image_png_base64`.")


def register_model(job: DistillJob, run: Run, export_dir: str) -> str | None:
    """log_final, its failure (MLflow down at the end of a run, after MLflow's own retries: minutes) turned
    into an error that says what is safe and what to do. A re-run resumes the finished run and registers the
    model once (log_final skips a version the run already has)."""
    try:
        return log_final(job, run, export_dir)
    except Exception as err:  # noqa: BLE001 - any client failure means the same to the user
        detail = redact_text(str(err)).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise TrackingError(
            f"tracking.mlflow_uri: MLflow at {redact(run.uri)} failed while logging and registering the model "
            f"({type(err).__name__}: {detail}). Training finished and the pipeline is exported at {export_dir}; "
            f"run the same command again once MLflow answers: it resumes the finished run (MLflow run {run.run_id}) "
            "and registers the model once") from err


def log_final(job: DistillJob, run: Run, export_dir: str) -> str | None:
    """Resolved job, the exported pipeline as a registered pyfunc model with an alias. Returns the version."""
    done = tracking.registered_version(run, job.tracking.registered_model)
    if done:  # a resubmitted finished run registers nothing new
        return done
    endpoint = job.storage.endpoint_url
    with tempfile.TemporaryDirectory() as d:
        resolved = Path(d) / RESOLVED
        resolved.write_bytes(storage.read_bytes(storage.join(job.run_dir(), RESOLVED), endpoint))
        local = storage.download_dir(export_dir, Path(d) / "pipeline", endpoint)
        return tracking.log_model(run, local, [resolved], job.tracking.registered_model, job.tracking.alias,
                                  model_description(job, run, export_dir))
