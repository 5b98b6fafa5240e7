"""MLflow tracking: one run per job, fed through one narrow seam (a Ray Train UserCallback on rank 0's reports).

The run id is stored in the job's run folder (``mlflow_run_id``), so a resumed or restarted job logs into
the same run. A tracking server that is unreachable at start fails the job before training (unless
``tracking.optional``); an outage in the middle of a run only costs metrics (buffered and retried, with
a warning), never the training.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
from ray.train import UserCallback

from loopfree_platform import storage
from loopfree_platform.distill.job import DistillJob
from loopfree_platform.jobfile import redact, redact_text
from loopfree_platform.runtime import fluent_tracking_uri

RUN_ID_FILE = "mlflow_run_id"
MAX_BUFFERED = 10_000
# MLflow's UI sections a run's charts by the prefix before "/": training first, then evaluation, then speed.
PERF_METRICS = {"step_time_s", "samples_per_s", "eta_s", "peak_memory_gb", "data_wait_s_per_step"}
ONCE_METRICS = {"first_batch_s", "worker_startup_s"}  # one value per start: a tag, not a flat 30-point series


class TrackingError(RuntimeError):
    pass


def tracking_uri(job: DistillJob) -> str:
    """Job file, then MLFLOW_TRACKING_URI, then a sqlite store in the local runs folder."""
    uri = job.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    folder = Path("runs") if storage.is_s3(job.storage.path) else Path(job.storage.path)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def _fail_fast(timeout_s: int = 10):
    """MLflow's HTTP client retries with backoff for minutes by default: a probe or a training-side
    log call should fail within seconds instead."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout_s))
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _local_artifacts(uri: str) -> str | None:
    """Artifacts of a local sqlite store live beside it (not in ./mlruns of whatever the cwd is)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None  # a tracking server decides


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): str(data)[:6000]}


def mlflow_key(name: str) -> str:
    """A reported metric's MLflow name: `eval/...` as is, speed and memory under `perf/`, the rest `train/`."""
    if "/" in name:
        return name
    return f"perf/{name}" if name in PERF_METRICS else f"train/{name}"


def experiment_id(client, name: str, uri: str) -> str:
    """The experiment, created if needed, marked as model training so MLflow 3's UI opens it on its runs
    (not on the GenAI traces view)."""
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=_local_artifacts(uri))
    if not exp or "mlflow.experimentKind" not in exp.tags:
        client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    return exp_id


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


def run_page(uri: str, run_id: str) -> str | None:
    """Where a person looks at the run: its page in MLflow's model-training view (the UI opens on its GenAI
    view otherwise), or for a local store the command that serves it. None if the store does not answer."""
    from mlflow.tracking import MlflowClient

    try:
        with _fail_fast():
            exp = MlflowClient(uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - only a hint
        return None
    page = f"#/experiments/{exp}/runs/{run_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"mlflow ui --backend-store-uri {uri}, then http://127.0.0.1:5000/{page}"


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


def start_run(job: DistillJob) -> tuple[str, str] | None:
    """(tracking URI, run id): the job's existing run when resuming, else a new run; its description and
    params follow once the run's step count is known (`describe_run`)."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(job)
    client = MlflowClient(uri)
    id_file = storage.join(job.run_dir(), RUN_ID_FILE)
    tags = {"loopfree.job": job.name, "mlflow.source.type": "JOB",
            "mlflow.source.name": f"loopfree distill ({job.name})"}
    try:
        with _fail_fast():
            if storage.exists(id_file, job.storage.endpoint_url):
                run_id = storage.read_bytes(id_file, job.storage.endpoint_url).decode().strip()
                client.get_run(run_id)  # must still exist, and the server must answer
                return uri, run_id
            commit = git_commit()  # only for a new run: a resumed run keeps the commit it started from
            if commit:
                tags["mlflow.source.git.commit"] = commit
            exp_id = experiment_id(client, job.tracking.experiment, uri)
            if job.tracking.parent_run_id:
                tags["mlflow.parentRunId"] = job.tracking.parent_run_id  # shows as a child in the MLflow UI
            run = client.create_run(exp_id, run_name=job.name, tags=tags)
    except Exception as err:  # noqa: BLE001 - any client failure means the same to the user
        detail = redact_text(str(err))[:300]
        message = f"tracking.mlflow_uri: MLflow at {redact(uri)} is not usable ({type(err).__name__}: {detail})"
        if job.tracking.optional:
            warnings.warn(message + "; tracking.optional is set, training continues without MLflow", stacklevel=2)
            return None
        raise TrackingError(message) from None
    storage.write_bytes(id_file, run.info.run_id.encode(), job.storage.endpoint_url)
    return uri, run.info.run_id


def describe_run(job: DistillJob, uri: str, run_id: str) -> None:
    """The run's description from the job as it runs (its capped step count), and its params once: a run
    that has params keeps them (MLflow params never change; a resumed job may have been edited)."""
    from mlflow.entities import Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    client.log_batch(run_id, tags=[RunTag("mlflow.note.content", describe(job))])
    if client.get_run(run_id).data.params:
        return
    items = list(flatten(redact(job.resolved())).items())
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + 100]])


class MLflowTracking(UserCallback):
    """Logs rank 0's metrics at their step, and each new sample grid as an image over time."""

    def __init__(self, job: DistillJob, uri: str, run_id: str):
        self.job, self.uri, self.run_id = job, uri, run_id
        self.pending: list = []
        self.once: dict[str, str] = {}  # ONCE_METRICS values not yet set as tags
        self.logged_once: set[str] = set()  # set once per start of the job (a restart measures them anew)

    def after_report(self, run_context, metrics, checkpoint):
        from mlflow.entities import Metric, RunTag

        row = metrics[0]
        step = int(row["step"])
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        self.pending += [Metric(mlflow_key(k), float(v), 0, step) for k, v in numbers.items() if k not in ONCE_METRICS]
        self.pending = self.pending[-MAX_BUFFERED:]
        self.once.update({f"perf.{k}": f"{v:.3f}" for k, v in numbers.items() if k in ONCE_METRICS
                          and f"perf.{k}" not in self.logged_once})
        try:
            with _fail_fast():
                from mlflow.tracking import MlflowClient

                client = MlflowClient(self.uri)
                for i in range(0, len(self.pending), 500):
                    client.log_batch(self.run_id, metrics=self.pending[i:i + 500])
                self.pending = []
                if self.once:
                    client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self.once.items()])
                    self.logged_once |= set(self.once)
                    self.once = {}
                if step and step % self.job.sampling.every_steps == 0:
                    self._log_grid(client, step)
        except Exception as err:  # noqa: BLE001 - an outage must never stop training
            warnings.warn(f"MLflow logging failed at step {step} ({type(err).__name__}); "
                          f"{len(self.pending)} metric points buffered for retry", stacklevel=2)

    def _log_grid(self, client, step: int) -> None:
        import PIL.Image

        uri = storage.join(self.job.run_dir(), "samples", f"step_{step:08d}.png")
        if storage.exists(uri, self.job.storage.endpoint_url):
            with tempfile.TemporaryDirectory() as d:
                path = Path(d) / "grid.png"
                path.write_bytes(storage.read_bytes(uri, self.job.storage.endpoint_url))
                client.log_image(self.run_id, PIL.Image.open(path), key="samples", step=step)


def pyfunc_model():
    """An MLflow python model: a DataFrame with a "prompt" column (and optional "seed") -> PNG images
    (base64) with their seeds."""
    import mlflow.pyfunc

    class TiUEModel(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            from loopfree.pipeline import TiUEPipeline

            self.pipe = TiUEPipeline.from_pretrained(context.artifacts["pipeline"])

        def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
            import base64
            import io

            prompts = [str(p) for p in model_input["prompt"]]
            seeds = [int(s) for s in model_input["seed"]] if "seed" in model_input else None
            out = self.pipe(prompts, seeds=seeds)
            images = []
            for im in out.images:
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                images.append(base64.b64encode(buf.getvalue()).decode())
            return pd.DataFrame({"prompt": prompts, "seed": out.seeds, "image_png_base64": images})

    return TiUEModel()


# What the logged model needs besides its own code (shipped with it): pinned to the versions that made it.
MODEL_REQUIREMENTS = ("torch", "diffusers", "transformers", "safetensors", "numpy", "pillow", "pandas")


def model_signature():
    """Input: a "prompt" column and an optional "seed"; output: prompt, seed and the PNG as base64."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed"), ColSpec("string", "image_png_base64")]))


def model_description(job: DistillJob, run_id: str, export_dir: str) -> str:
    """The registered version's description: what it is, its K and timesteps, its teacher, its run."""
    import json

    config = json.loads(storage.read_bytes(storage.join(export_dir, "model_index.json"), job.storage.endpoint_url))
    return (f"{describe(job)}\n\nDecoder timesteps {config.get('timesteps')}; one encoder pass, K decoder passes "
            f"batched (docs/method.md). MLflow run {run_id}; pipeline exported to {export_dir}. Input: a DataFrame "
            "with `prompt` (and optional `seed`); output: `prompt`, `seed`, `image_png_base64`.")


def register_model(job: DistillJob, uri: str, run_id: str, export_dir: str) -> str | None:
    """log_final, its failure (MLflow down at the end of a run, after MLflow's own retries: minutes) turned
    into an error that says what is safe and what to do. A re-run resumes the finished run and registers the
    model once (log_final skips a version the run already has)."""
    try:
        return log_final(job, uri, run_id, export_dir)
    except Exception as err:  # noqa: BLE001 - any client failure means the same to the user
        detail = redact_text(str(err)).strip().splitlines()[0][:300] if str(err).strip() else ""
        raise TrackingError(
            f"tracking.mlflow_uri: MLflow at {redact(uri)} failed while logging and registering the model "
            f"({type(err).__name__}: {detail}). Training finished and the pipeline is exported at {export_dir}; "
            f"run the same command again once MLflow answers: it resumes the finished run (MLflow run {run_id}) "
            "and registers the model once") from err


def log_final(job: DistillJob, uri: str, run_id: str, export_dir: str) -> str | None:
    """Resolved config, the exported pipeline as a registered pyfunc model with an alias. Returns the version."""
    from importlib.metadata import version as installed

    import mlflow
    from mlflow.tracking import MlflowClient

    import loopfree

    client = MlflowClient(uri)
    name = job.tracking.registered_model
    if name:  # a resubmitted finished run registers nothing new
        done = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if done:
            return str(max(int(v.version) for v in done))
    with tempfile.TemporaryDirectory() as d, fluent_tracking_uri(uri):
        resolved = Path(d) / "job.resolved.yaml"
        resolved.write_bytes(storage.read_bytes(storage.join(job.run_dir(), "job.resolved.yaml"), job.storage.endpoint_url))
        client.log_artifact(run_id, str(resolved))
        local = storage.download_dir(export_dir, Path(d) / "pipeline", job.storage.endpoint_url)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name="model", python_model=pyfunc_model(), artifacts={"pipeline": str(local)},
                code_paths=[str(Path(loopfree.__file__).parent)],  # the model runs without the platform installed
                signature=model_signature(), input_example=pd.DataFrame({"prompt": ["a red sneaker"], "seed": [0]}),
                registered_model_name=job.tracking.registered_model,
                pip_requirements=[f"{name}=={installed(name)}" for name in MODEL_REQUIREMENTS])
    if not job.tracking.registered_model:
        return None
    version = str(info.registered_model_version)
    client.update_model_version(job.tracking.registered_model, version,
                                description=model_description(job, run_id, export_dir))
    client.set_registered_model_alias(job.tracking.registered_model, job.tracking.alias, version)
    return version
