"""The README's one-machine head as a user starts it: `ray start --head` as written (only the dashboard port
differs), an MLflow server (sqlite + S3 artifacts, the session's) and an S3 endpoint, all on 127.0.0.1. On it
the plain `ray job submit` line runs the uploaded code and ends STOPPED on `ray job stop`, and `loopfree
submit` refuses a relative storage.path before uploading.

The same two submission lines run a job to its end, resumed after a lost node and a killed driver, on a
cluster of several nodes in test_cluster_faults.py: one run lineage carries both files' claims about a
resumed run (every step once, one MLflow run, one model version that predicts).

Runs before the in-process Ray tests (file order) and stops its head at the end.
"""

import os
import re
import shutil
import subprocess
import time

import pytest

from tests.cluster import BIN, MARKER, readme_line, repo_copy, shell, stop_processes, wait_http, wait_job_agent

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_endpoint, mlflow_server, free_port):
    tmp = tmp_path_factory.mktemp("cluster")
    dash_port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           "MLFLOW_TRACKING_URI": mlflow_server, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    ray_tmp = f"/tmp/rayc{os.getpid()}"
    env["RAY_TMPDIR"] = ray_tmp  # this head's files (and its processes' command lines) under its own folder
    try:
        # The head as the README starts it (only the dashboard port differs), from a shell with the venv active.
        subprocess.run(["bash", "-c", f"source {BIN}/activate && {readme_line('ray start', dash_port)}"], env=env,
                       check=True, capture_output=True)
        wait_http(f"{mlflow_server}/health")  # the job's driver starts its MLflow run first
        wait_http(f"http://127.0.0.1:{dash_port}/api/version")
        wait_job_agent(f"http://127.0.0.1:{dash_port}")
        yield {"env": env, "address": f"http://127.0.0.1:{dash_port}", "port": dash_port, "tmp": tmp}
    finally:  # also when the head failed to become ready: nothing of it outlives the module
        # Only this cluster's processes (their command lines name its temp dir): `ray stop --force` would also
        # kill every other Ray instance on the machine, e.g. a developer's or a concurrent test run's.
        stop_processes(ray_tmp, grace_s=0)  # the cluster is thrown away: nothing to wait for
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_the_readme_head_runs_the_uploaded_code_stops_on_ray_job_stop_and_refuses_a_relative_storage_path(cluster):
    """The plain `ray job submit` line as written, from a repository copy whose platform/ announces itself: once
    the job's driver runs the uploaded code, `ray job stop` ends it STOPPED and the submit command returns. The
    driver has no SIGTERM handler of its own, so a stopped driver ends as a killed one does, and its resubmission
    takes the killed driver's path (test_cluster_faults.py)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    repo = repo_copy(cluster["tmp"] / "repo")
    out = cluster["tmp"] / "plain.out"
    plain = shell(readme_line("ray job submit", cluster["port"]), repo, cluster["env"], out)
    deadline = time.time() + 180
    while MARKER not in out.read_text():  # the job's driver imported the uploaded platform/
        assert plain.poll() is None and time.time() < deadline, out.read_text()[-3000:]
        time.sleep(0.5)
    sid = re.search(r"Job '(\S+)' submitted successfully", out.read_text())[1]
    stop = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", cluster["address"], sid], env=cluster["env"],
                          capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stdout[-3000:] + stop.stderr[-3000:]
    plain.wait(timeout=120)
    jobs = JobSubmissionClient(cluster["address"])
    assert jobs.get_job_status(sid) == JobStatus.STOPPED, out.read_text()[-3000:]

    relative = shell(readme_line("loopfree submit", cluster["port"]).split(" --set ")[0], repo, cluster["env"])
    refused = relative.communicate(timeout=120)[0]  # storage.path: runs (relative), refused before uploading
    assert relative.returncode == 2 and "storage.path: 'runs' is relative" in refused, refused
