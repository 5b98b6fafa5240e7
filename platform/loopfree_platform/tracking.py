"""MLflow for every product: the one module that calls it (docs/architecture.md, "The dependency rule").

Distillation, sweeps and evaluation open their runs here (`open_run`): the experiment is created on first
use, and the server is checked first and must answer within seconds (`fail_fast`), so an unreachable
server fails a job before it allocates a cluster, naming ``tracking.mlflow_uri``. A `Run` logs params,
metrics, tags, images and text; `log_model` logs an exported TiUE pipeline as a registered pyfunc model;
`registry_version` and `download_model` read the registry back for serving and generation.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from loopfree_platform import storage
from loopfree_platform.jobfile import redact, redact_text

# What a logged model needs besides its own code (shipped with it): pinned to the versions that made it.
MODEL_REQUIREMENTS = ("torch", "diffusers", "transformers", "safetensors", "numpy", "pillow", "pandas")


class TrackingError(RuntimeError):
    pass


def resolve_uri(configured: str | None, local_folder: str | Path) -> str:
    """The job's tracking URI, then MLFLOW_TRACKING_URI, then a sqlite store in `local_folder`."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    folder = Path(local_folder)
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def fail_fast(timeout_s: int = 10):
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


@contextlib.contextmanager
def fluent_tracking_uri(uri: str):
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI for the whole process; scope it and restore."""
    import mlflow

    saved_env, saved_uri = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _experiment_id(client, name: str, uri: str) -> str:
    """The experiment, created if needed (a local store keeps its artifacts beside it, not in the cwd's
    ./mlruns), marked as model training so MLflow 3's UI opens it on its runs, not on its GenAI view."""
    exp = client.get_experiment_by_name(name)
    local = uri.startswith("sqlite:///")  # a tracking server decides where its artifacts go
    artifacts = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri() if local else None
    exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location=artifacts)
    if not exp or "mlflow.experimentKind" not in exp.tags:
        client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    return exp_id


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested job data as MLflow params: dotted keys, values as text within MLflow's length limit."""
    if isinstance(data, dict):
        return {k: v for key, value in data.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): str(data)[:6000]}


@dataclass(frozen=True)
class Run:
    """One MLflow run; every call is a few requests in batches."""

    uri: str
    run_id: str

    def log_params(self, params: dict[str, str]) -> None:
        """Params once: a run that has params keeps them (MLflow params never change; a resumed job may
        have been edited since)."""
        from mlflow.entities import Param

        client = _client(self.uri)
        if client.get_run(self.run_id).data.params:
            return
        items = list(params.items())
        for i in range(0, len(items), 100):
            client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i:i + 100]])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        _client(self.uri).log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def log_metrics(self, points: list[tuple[str, float, int]]) -> None:
        """(key, value, step) points."""
        from mlflow.entities import Metric

        client = _client(self.uri)
        for i in range(0, len(points), 500):
            client.log_batch(self.run_id, metrics=[Metric(k, float(v), 0, step) for k, v, step in points[i:i + 500]])

    def log_image(self, png: bytes, key: str, step: int) -> None:
        """An image over time (MLflow's image slider), from PNG bytes."""
        import PIL.Image

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "image.png"
            path.write_bytes(png)
            _client(self.uri).log_image(self.run_id, PIL.Image.open(path), key=key, step=step)

    def log_text(self, text: str, artifact_file: str) -> None:
        _client(self.uri).log_text(self.run_id, text, artifact_file)

    def end(self, status: str = "FINISHED") -> None:
        _client(self.uri).set_terminated(self.run_id, status=status)

    def page(self) -> str | None:
        """Where a person looks at the run: its page in MLflow's model-training view (the UI opens on its
        GenAI view otherwise), or for a local store the command that serves it. None if the store does not answer."""
        try:
            with fail_fast():
                exp = _client(self.uri).get_run(self.run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - only a hint
            return None
        page = f"#/experiments/{exp}/runs/{self.run_id}?workflowType=machine_learning"
        if self.uri.startswith(("http://", "https://")):
            return f"{self.uri.rstrip('/')}/{page}"
        return f"mlflow ui --backend-store-uri {self.uri}, then http://127.0.0.1:5000/{page}"


def open_run(uri: str, experiment: str, run_name: str, tags: dict[str, str], id_file: str | None = None,
             endpoint_url: str | None = None) -> Run:
    """The run a job logs into, after a check that the server answers (within seconds). With `id_file` (a
    file in the job's run folder) a restarted job finds its own run again: the run it names, if that file
    exists, else a new one whose id is written there. Raises TrackingError naming tracking.mlflow_uri."""
    client = _client(uri)
    try:
        with fail_fast():
            if id_file and storage.exists(id_file, endpoint_url):
                run_id = storage.read_bytes(id_file, endpoint_url).decode().strip()
                client.get_run(run_id)  # must still exist, and the server must answer
                return Run(uri, run_id)
            run = client.create_run(_experiment_id(client, experiment, uri), run_name=run_name, tags=tags)
    except Exception as err:  # noqa: BLE001 - any client failure means the same to the user
        detail = redact_text(str(err))[:300]
        raise TrackingError(f"tracking.mlflow_uri: MLflow at {redact(uri)} is not usable "
                            f"({type(err).__name__}: {detail})") from None
    if id_file:
        storage.write_bytes(id_file, run.info.run_id.encode(), endpoint_url)
    return Run(uri, run.info.run_id)


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


def model_signature():
    """Input: a "prompt" column and an optional "seed"; output: prompt, seed and the PNG as base64."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed", required=False)]),
        outputs=Schema([ColSpec("string", "prompt"), ColSpec("long", "seed"), ColSpec("string", "image_png_base64")]))


def registered_version(run: Run, name: str | None) -> str | None:
    """The newest version of model `name` that this run registered, if any."""
    done = _client(run.uri).search_model_versions(f"name = '{name}' and run_id = '{run.run_id}'") if name else []
    return str(max(int(v.version) for v in done)) if done else None


def log_model(run: Run, pipeline_dir: Path, files: list[Path], registered_model: str | None, alias: str,
              description: str) -> str | None:
    """`files` as artifacts of the run, and the pipeline as its pyfunc model "model", registered under
    `registered_model` with `alias` and `description` when a name is given. Returns the version."""
    from importlib.metadata import version as installed

    import mlflow

    import loopfree

    client = _client(run.uri)
    for path in files:
        client.log_artifact(run.run_id, str(path))
    with fluent_tracking_uri(run.uri), mlflow.start_run(run_id=run.run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=pyfunc_model(), artifacts={"pipeline": str(pipeline_dir)},
            code_paths=[str(Path(loopfree.__file__).parent)],  # the model runs without the platform installed
            signature=model_signature(), input_example=pd.DataFrame({"prompt": ["a red sneaker"], "seed": [0]}),
            registered_model_name=registered_model,
            pip_requirements=[f"{name}=={installed(name)}" for name in MODEL_REQUIREMENTS])
    if not registered_model:
        return None
    version = str(info.registered_model_version)
    client.update_model_version(registered_model, version, description=description)
    client.set_registered_model_alias(registered_model, alias, version)
    return version


def registry_version(uri: str | None, name: str, alias: str) -> str:
    """The version an alias points at; LookupError with MLflow's message if there is none."""
    import mlflow

    try:
        return str(_client(uri).get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException as err:
        raise LookupError(err.message) from None


def download_model(uri: str | None, name: str, version: str, folder: Path) -> None:
    """The files of a registered model version into `folder`."""
    import mlflow

    # models:/ URIs resolve through the registry URI, which follows the fluent tracking URI, not an argument
    with fluent_tracking_uri(uri) if uri else contextlib.nullcontext():
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(folder))


def default_uri() -> str:
    """The tracking URI MLflow uses when none is given."""
    import mlflow

    return mlflow.get_tracking_uri()
