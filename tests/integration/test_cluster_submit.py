"""End to end as a user runs it: `ray start --head`, `mlflow server` (sqlite + S3 artifacts, the session's), an
S3 endpoint, all on 127.0.0.1, and the job submitted with the plain `ray job submit` command from the README.

Runs before the in-process Ray tests (file order) and stops its cluster at the end.
"""

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster import BIN, ROOT, repo_copy, stop_processes, wait_http, wait_job_agent

pytestmark = pytest.mark.timeout(600)  # a cluster, an MLflow server and two or three submitted jobs per test


def readme_lines() -> list[str]:
    """The README's one-machine cluster commands ("The cluster path on one machine"), as written."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### The cluster path on one machine"):]
    start = section.index("```bash\n") + len("```bash\n")
    return [line for line in section[start:section.index("```", start)].splitlines() if line.strip()]


def readme_line(word: str, port: int) -> str:
    """The README line that runs `word` (e.g. "ray start"), its dashboard port 8265 replaced by `port`."""
    return next(line for line in readme_lines() if word in line).replace("8265", str(port))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_endpoint, mlflow_server, free_port):
    tmp = tmp_path_factory.mktemp("cluster")
    dash_port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           "MLFLOW_TRACKING_URI": mlflow_server, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    ray_tmp = f"/tmp/rayc{os.getpid()}"
    env["RAY_TMPDIR"] = ray_tmp  # this head's files (and its processes' command lines) under its own folder
    try:
        # The head as the README starts it (only the dashboard port differs), from a shell with the venv active.
        subprocess.run(["bash", "-c", f"source {BIN}/activate && {readme_line('ray start', dash_port)}"], env=env,
                       check=True, capture_output=True)
        wait_http(f"{mlflow_server}/health")
        wait_http(f"http://127.0.0.1:{dash_port}/api/version")
        wait_job_agent(f"http://127.0.0.1:{dash_port}")
        yield {"env": env, "address": f"http://127.0.0.1:{dash_port}", "mlflow": env["MLFLOW_TRACKING_URI"], "tmp": tmp}
    finally:  # also when the head failed to become ready: nothing of it outlives the module
        # Only this cluster's processes (their command lines name its temp dir): `ray stop --force` would also
        # kill every other Ray instance on the machine, e.g. a developer's or a concurrent test run's.
        stop_processes(ray_tmp, grace_s=0)  # the cluster is thrown away: nothing to wait for
        shutil.rmtree(ray_tmp, ignore_errors=True)


def ray_job(cluster, *args, check=True, cwd=None) -> subprocess.CompletedProcess:
    out = subprocess.run([str(BIN / "ray"), "job", *args], env=cluster["env"], capture_output=True, text=True,
                         timeout=600, cwd=cwd)
    assert not check or out.returncode == 0, f"ray job {args[0]} failed: {out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def readme_repo(cluster) -> tuple[Path, str]:
    """A copy of the repository (code, jobs, data) with the venv linked, whose platform/ prints a marker when
    imported: (folder, marker)."""
    repo = repo_copy(cluster["tmp"] / "repo")
    marker = "loopfree_platform imported from the uploaded tree"
    with open(repo / "platform" / "loopfree_platform" / "__init__.py", "a") as f:
        f.write(f"\nprint({marker!r}, flush=True)\n")
    return repo, marker


def test_the_readme_commands_stopped_and_resubmitted_resume_one_run_with_the_uploaded_code(cluster):
    """The README's one-machine commands as written, from a repository copy whose platform/ announces itself:
    the plain `ray job submit`, stopped after its first checkpoint, then `loopfree submit`. Both run the
    uploaded code; the second resumes the first's run: every step once, one MLflow run (params, sectioned
    metrics, captioned grids, no credential), one model version that predicts. A relative storage.path is
    refused by `loopfree submit` before uploading (the job's own refusal: test_submission.py)."""
    import mlflow
    import pandas as pd
    import PIL.Image
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobStatus, JobSubmissionClient

    repo, marker = readme_repo(cluster)
    port = int(cluster["address"].rsplit(":", 1)[1])
    run_dir = repo / "runs" / "cluster" / "smoke-tiny"  # the absolute storage.path, outside Ray's upload copy

    def shell(line: str, **kw):
        return subprocess.Popen(["bash", "-c", f"source .venv/bin/activate && {line}"], cwd=repo, env=cluster["env"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)

    t0 = time.time()
    plain = shell(readme_line("ray job submit", port))
    deadline = time.time() + 300
    while not list(run_dir.glob("checkpoint_*")):  # stop the job once its first checkpoint is written
        assert plain.poll() is None and time.time() < deadline, plain.communicate()[0][-3000:]
        time.sleep(0.5)
    print(f"submission to first checkpoint: {time.time() - t0:.0f} s")
    jobs = JobSubmissionClient(cluster["address"])
    sid = next(j.submission_id for j in jobs.list_jobs() if j.status == JobStatus.RUNNING)
    ray_job(cluster, "stop", "--address", cluster["address"], sid)
    while jobs.get_job_status(sid) not in (JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED):
        time.sleep(0.5)  # the stopped driver and its trainer must be gone before the resubmission
    plain_out = plain.communicate(timeout=120)[0]
    assert jobs.get_job_status(sid) == JobStatus.STOPPED and marker in plain_out, plain_out[-3000:]

    t1 = time.time()
    second = shell(readme_line("loopfree submit", port))
    out = second.communicate(timeout=600)[0]
    print(f"resubmission to SUCCEEDED: {time.time() - t1:.0f} s")
    assert second.returncode == 0 and "ended: SUCCEEDED" in out and marker in out, out[-3000:]

    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # each step once
    assert (run_dir / "checkpoint_00000008").is_dir() and (run_dir / "export" / "model_index.json").is_file()
    client = MlflowClient(cluster["mlflow"])
    runs = client.search_runs([client.get_experiment_by_name("loopfree").experiment_id],
                              filter_string="tags.`loopfree.job` = 'smoke-tiny'")
    assert [r.info.run_id for r in runs] == [(run_dir / "mlflow_run_id").read_text().strip()]  # one run, resumed
    run = runs[0]
    assert sorted({m.step for m in client.get_metric_history(run.info.run_id, "train/loss_vsd")}) == list(range(1, 9))
    assert run.data.params["scaling.num_workers"] == "2" and run.data.params["method.lambda_kl"] == "0.1"
    for key in ("train/loss_kl", "train/loss_fake_score", "train/grad_norm_student", "train/lr_student", "perf/samples_per_s"):
        assert len(client.get_metric_history(run.info.run_id, key)) >= 8, key
    assert "perf/first_batch_s" not in run.data.metrics and "perf.first_batch_s" in run.data.tags
    # Credentials in the environment never reach MLflow params, tags, the logged job or the job's logs.
    secret = cluster["env"]["AWS_SECRET_ACCESS_KEY"]
    logged_job = Path(client.download_artifacts(run.info.run_id, "job.resolved.yaml")).read_text()
    assert secret not in str(run.data.params) + str(run.data.tags) + logged_job + plain_out + out
    grids = [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    assert len(grids) >= 2 and PIL.Image.open(client.download_artifacts(run.info.run_id, grids[0])).height >= 128
    assert [v.run_id for v in client.search_model_versions("name = 'loopfree-tiue'")] == [run.info.run_id]
    assert client.get_model_version_by_alias("loopfree-tiue", "candidate").run_id == run.info.run_id
    from loopfree_platform.tracking import fluent_tracking_uri

    with fluent_tracking_uri(cluster["mlflow"]):  # must not leak into later tests once this server is gone
        model = mlflow.pyfunc.load_model("models:/loopfree-tiue@candidate")
    images = model.predict(pd.DataFrame({"prompt": ["a cat", "a dog"], "seed": [0, 1]}))
    assert len(images) == 2 and images["image_png_base64"].str.len().min() > 100

    relative = shell(readme_line("loopfree submit", port).split(" --set ")[0])  # storage.path: runs (relative)
    refused = relative.communicate(timeout=120)[0]
    assert relative.returncode == 2 and "storage.path: 'runs' is relative" in refused, refused
