"""MLflow tracking in-process: unreachable servers fail before training; an outage mid-run does not kill it."""

import os
import warnings
from pathlib import Path

import pytest
from loopfree_platform.distill.driver import capped, run_distill
from loopfree_platform.distill.job import DistillJob
from loopfree_platform.distill.tracking import MLflowTracking, describe_run, start_run
from loopfree_platform.tracking import Run, TrackingError, flatten


@pytest.fixture
def job(tmp_path, smoke_job):
    """job(**tracking) -> the smoke job, 2 steps, runs under tmp_path, with this tracking section."""

    def make(**tracking) -> DistillJob:
        data = smoke_job({"storage": {"path": str(tmp_path / "runs")}, "tracking": tracking})
        data["training"] = {"max_steps": 2}
        return DistillJob.model_validate(data)

    return make


def test_unreachable_server_fails_before_training(job):
    j = job(mlflow_uri="http://127.0.0.1:9/")  # discard port: nothing listens
    with pytest.raises(TrackingError, match="tracking.mlflow_uri: MLflow at http://127.0.0.1:9/ is not usable"):
        run_distill(j)
    assert not list(Path(j.run_dir()).glob("checkpoint_*"))


def test_optional_tracking_only_warns(job):
    j = job(mlflow_uri="http://127.0.0.1:9/", optional=True)
    with pytest.warns(UserWarning, match="training continues without MLflow"):
        assert start_run(j) is None


def test_outage_mid_run_buffers_metrics_and_keeps_going(job):
    j = job()
    run = start_run(j)
    uri, run_id = run.uri, run.run_id
    callback = MLflowTracking(j, Run("http://127.0.0.1:9/", run_id))  # the server "goes away"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        callback.after_report(None, [{"step": 1, "loss_vsd": 0.5}], None)
    assert any("buffered for retry" in str(w.message) for w in caught) and len(callback.pending) == 1
    callback.run = run  # back again: the buffered point is delivered with the next report
    callback.after_report(None, [{"step": 2, "loss_vsd": 0.4}], None)
    from mlflow.tracking import MlflowClient

    history = MlflowClient(uri).get_metric_history(run_id, "train/loss_vsd")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.4)] and not callback.pending


def test_params_are_flat_and_redacted():
    flat = flatten({"a": {"b": 1, "api_key": "x"}, "c": [1, 2]})
    assert flat == {"a.b": "1", "a.api_key": "x", "c": "[1, 2]"}


def test_a_run_reads_in_sections_with_its_description_commit_and_one_off_values_as_tags(job):
    import subprocess

    from mlflow.tracking import MlflowClient

    j = job()
    tracked = start_run(j)
    uri, run_id = tracked.uri, tracked.run_id
    asked = j.model_copy(update={"training": j.training.model_copy(update={"max_steps": 500})})
    describe_run(capped(asked, rows=8), tracked)  # the corpus holds 2 global batches of 4: the run is 2 steps
    callback = MLflowTracking(j, tracked)
    for step in (1, 2):
        callback.after_report(None, [{"step": step, "loss_vsd": 0.5, "grad_norm_student": 1.0, "samples_per_s": 3.0,
                                      "first_batch_s": 4.25, "worker_startup_s": 9.5, "eval/fid": 100.0}], None)
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert set(run.data.metrics) == {"train/loss_vsd", "train/grad_norm_student", "perf/samples_per_s", "eval/fid"}
    assert len(client.get_metric_history(run_id, "train/loss_vsd")) == 2
    assert run.data.tags["perf.first_batch_s"] == "4.250" and run.data.tags["perf.worker_startup_s"] == "9.500"
    note = run.data.tags["mlflow.note.content"]
    assert j.name in note and "K=4" in note and "tiny" in note and "2 steps" in note
    assert run.data.params["training.max_steps"] == "2" and run.data.params["method.vsd_weighting"] == "one_minus_alpha_bar"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert run.data.tags.get("mlflow.source.git.commit") == (head or None)
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert run.data.tags["mlflow.source.name"] == f"loopfree distill ({j.name})"
    page = tracked.page()  # what the CLI prints: the run in the UI's model-training view
    assert page.endswith(f"#/experiments/{run.info.experiment_id}/runs/{run_id}?workflowType=machine_learning")


@pytest.mark.timeout(300)
def test_the_registered_model_carries_signature_example_description_pins_and_predicts_from_the_cli(
        job, tiny_pipeline_dir, tmp_path):
    import base64
    import io
    import json
    import subprocess
    import sys

    import mlflow
    import PIL.Image
    import yaml
    from loopfree_platform import storage
    from loopfree_platform.distill.tracking import log_final
    from loopfree_platform.tracking import fluent_tracking_uri
    from mlflow.tracking import MlflowClient

    j = job(registered_model="tiue-card")
    run = start_run(j)
    uri, run_id = run.uri, run.run_id
    storage.write_bytes(storage.join(j.run_dir(), "job.resolved.yaml"), yaml.safe_dump(j.resolved()).encode())
    assert log_final(j, run, str(tiny_pipeline_dir)) == "1"

    client = MlflowClient(uri)
    version = client.get_model_version_by_alias("tiue-card", "candidate")
    assert run_id in version.description and "K=4" in version.description and "Decoder timesteps [" in version.description
    with fluent_tracking_uri(uri):
        info = mlflow.models.get_model_info("models:/tiue-card@candidate")
        requirements = Path(mlflow.artifacts.download_artifacts("models:/tiue-card@candidate/requirements.txt",
                                                                dst_path=str(tmp_path))).read_text().split()
    assert info.signature.inputs.input_names() == ["prompt", "seed"] and info.saved_input_example_info
    assert "image_png_base64" in info.signature.outputs.input_names()
    assert requirements and all("==" in r for r in requirements) and any(r.startswith("torch==") for r in requirements)

    request = tmp_path / "request.json"
    request.write_text(json.dumps({"dataframe_split": {"columns": ["prompt", "seed"], "data": [["a bag", 3]]}}))
    out = tmp_path / "out.json"
    done = subprocess.run([str(Path(sys.executable).parent / "mlflow"), "models", "predict", "-m",
                           "models:/tiue-card@candidate", "-i", str(request), "-t", "json", "-o", str(out),
                           "--env-manager", "local"], env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["predictions"]
    assert [(r["prompt"], r["seed"]) for r in rows] == [("a bag", 3)]
    assert PIL.Image.open(io.BytesIO(base64.b64decode(rows[0]["image_png_base64"]))).size == (64, 64)


def test_mlflow_down_at_registration_names_the_export_and_a_rerun_registers_the_model_once(
        job, tiny_pipeline_dir, monkeypatch):
    import yaml
    from loopfree_platform import storage
    from loopfree_platform.distill.tracking import register_model
    from mlflow.tracking import MlflowClient

    j = job(registered_model="tiue-outage")
    run = start_run(j)
    run_id = run.run_id
    storage.write_bytes(storage.join(j.run_dir(), "job.resolved.yaml"), yaml.safe_dump(j.resolved()).encode())
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, not after MLflow's minutes of retries
    with pytest.raises(TrackingError) as err:
        register_model(j, Run("http://127.0.0.1:9/", run_id), str(tiny_pipeline_dir))  # the server is down
    message = str(err.value)
    assert "MLflow at http://127.0.0.1:9/ failed while logging and registering the model" in message
    assert f"exported at {tiny_pipeline_dir}" in message and "run the same command again" in message
    assert run_id in message
    # MLflow answers again: the re-run's registration makes one version, and a further one makes none
    assert register_model(j, run, str(tiny_pipeline_dir)) == "1"
    assert register_model(j, run, str(tiny_pipeline_dir)) == "1"
    assert [str(v.version) for v in MlflowClient(run.uri).search_model_versions("name = 'tiue-outage'")] == ["1"]
