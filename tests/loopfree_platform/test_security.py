"""Secrets never leave through job output, params or errors; user-derived paths stay under their prefix;
job files are loaded safely. (The Serve token is checked over HTTP in tests/integration/serve/test_serve.py,
MLflow params and job logs of a real cluster run in tests/integration/test_cluster_faults.py.)"""

import subprocess
import sys

import pytest
from loopfree_platform import storage
from loopfree_platform.distill.job import DistillJob, load_job
from loopfree_platform.jobfile import JobError, redact, redact_text
from loopfree_platform.serve.job import load_generate_job, load_serve_job
from loopfree_platform.tracking import flatten

SECRETS = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-test-secret", "AWS_SESSION_TOKEN": "FwoGZXIvYXdz-session",
           "RAY_AUTH_TOKEN": "ray-cluster-token-123", "MLFLOW_TRACKING_PASSWORD": "mlflow-pass-456",
           "LOOPFREE_SERVE_TOKEN": "serve-token-789"}


def test_redact_hides_secret_keys_and_url_passwords_and_redact_text_env_secrets(monkeypatch):
    for k, v in SECRETS.items():
        monkeypatch.setenv(k, v)
    out = redact({"note": "http://alice:hunter2pass@mlflow:5000/ s3://bucket/key",
                  "nested": [{"api_token": "abc", "tokenizer": "kept", "token_env": "LOOPFREE_SERVE_TOKEN"}]})
    assert out == {"note": "http://alice:***@mlflow:5000/ s3://bucket/key",
                   "nested": [{"api_token": "***", "tokenizer": "kept", "token_env": "LOOPFREE_SERVE_TOKEN"}]}
    text = redact_text("failed: " + " ".join(SECRETS.values()) + " http://alice:hunter2pass@mlflow:5000/")
    assert all(v not in text for v in [*SECRETS.values(), "hunter2pass"]) and text.startswith("failed: ***")


def test_a_secret_value_that_is_also_an_ordinary_word_leaves_the_job_as_written(monkeypatch, smoke_job, write_job):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")  # moto's usual credentials
    data = smoke_job({"name": "testing-run", "sampling": {"prompts": ["a testing lab with a cat", "a red bag"], "seeds": [0, 1]}})
    job = load_job(write_job(data))
    resolved = redact(job.resolved())
    assert resolved["name"] == "testing-run" and resolved["sampling"]["prompts"][0] == "a testing lab with a cat"
    assert DistillJob.model_validate(resolved).resolved() == job.resolved()  # reproduced from job.resolved.yaml


def test_credentials_in_a_job_never_reach_dry_run_output_or_mlflow_params(tmp_path, monkeypatch, smoke_job, write_job):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRETS["MLFLOW_TRACKING_PASSWORD"])
    path = write_job(smoke_job({"tracking": {"mlflow_uri": "http://alice:hunter2pass@127.0.0.1:5999"}}))
    params = flatten(redact(load_job(path).resolved()))
    assert "hunter2pass" not in str(params) and params["tracking.mlflow_uri"] == "http://alice:***@127.0.0.1:5999"
    out = subprocess.run([sys.executable, "-m", "loopfree_platform.cli", "distill", str(path), "--dry-run"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0 and "hunter2pass" not in out.stdout + out.stderr


def test_bad_job_errors_name_the_key_not_the_secret_value(write_job):
    path = write_job({"model": {"source": "models:/x@y"}, "serving": {"aws_secret_key": "AKIAXYZSECRET"}})
    with pytest.raises(JobError) as err:
        load_serve_job(path)
    assert "serving.aws_secret_key" in str(err.value) and "AKIAXYZSECRET" not in str(err.value)


@pytest.mark.parametrize("loader", [load_job, load_serve_job, load_generate_job])
def test_job_yaml_is_loaded_safely(tmp_path, loader):
    marker = tmp_path / "pwned"
    path = tmp_path / "job.yaml"
    path.write_text(f"model: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(JobError, match="not valid YAML"):
        loader(path)
    assert not marker.exists()


@pytest.mark.parametrize("part", ["../escape", "a/../../b", "/etc/passwd", "..", "x/..\\..\\y"])
def test_keys_from_user_input_cannot_escape_the_prefix(part):
    with pytest.raises(ValueError, match="would escape"):
        storage.join("s3://bucket/generated/run", part)
    with pytest.raises(ValueError, match="would escape"):
        storage.join("/data/out", "images", part)
    assert storage.join("s3://bucket/generated/run", "images", "000001.png") == "s3://bucket/generated/run/images/000001.png"


def test_serve_dry_run_refuses_a_required_token_that_is_unset(write_job, monkeypatch, capsys):
    from loopfree_platform.cli import main

    monkeypatch.delenv("LOOPFREE_SERVE_TOKEN", raising=False)
    job = write_job({"model": {"source": "models:/loopfree-tiue@candidate"}, "auth": {"required": True}}, "serve.yaml")
    assert main(["serve", str(job), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "auth.required" in err and "LOOPFREE_SERVE_TOKEN" in err and str(job) in err
    monkeypatch.setenv("LOOPFREE_SERVE_TOKEN", "serve-token-789")
    assert main(["serve", str(job), "--dry-run"]) == 0


@pytest.mark.parametrize("host, required", [("127.0.0.1", False), ("localhost", False), ("0.0.0.0", True),
                                            ("10.0.0.5", True)])
def test_serving_beyond_loopback_forces_auth_required(write_job, host, required):
    job = load_serve_job(write_job({"model": {"source": "models:/m@a"}, "http": {"host": host}}, "serve.yaml"))
    assert job.auth.required is required


def test_serving_beyond_loopback_without_a_token_fails_the_dry_run(write_job, monkeypatch, capsys):
    from loopfree_platform.cli import main

    monkeypatch.delenv("LOOPFREE_SERVE_TOKEN", raising=False)
    job = write_job({"model": {"source": "models:/m@a"}, "http": {"host": "0.0.0.0"}}, "serve.yaml")
    assert main(["serve", str(job), "--dry-run"]) == 2
    assert "http.host 0.0.0.0 is not loopback" in capsys.readouterr().err
