"""Helpers of the `ray start` tests: processes started by a test and stopped by their own temp dir, HTTP
readiness, an MLflow server, the README's cluster lines and a repository copy to submit them from."""

import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def stop_processes(pattern: str, grace_s: float = 5.0) -> None:
    """End the processes whose command line names `pattern` (a cluster's own temp dir, so only what this test
    started): SIGTERM, then SIGKILL whatever is left after the grace period (gcs_server ignores SIGTERM for
    seconds; the cluster is thrown away, so 5 s of grace is enough). `ray stop` would stop every Ray instance
    on the machine."""
    subprocess.run(["pkill", "-TERM", "-f", pattern], capture_output=True)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode != 0:
            return
        time.sleep(0.5)
    subprocess.run(["pkill", "-KILL", "-f", pattern], capture_output=True)


def wait_http(url: str, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def wait_job_agent(address: str, timeout: float = 120) -> None:
    """Until the head's job agent has registered, Ray refuses submissions ("No available agent"); `ray start`
    and the dashboard's HTTP answer come before that on a loaded machine. A no-op job, submitted as
    `loopfree submit` does (retried while the agent is missing), and waited for."""
    from loopfree_platform.submit import when_agent_ready
    from ray.job_submission import JobStatus, JobSubmissionClient

    client, deadline = JobSubmissionClient(address), time.time() + timeout
    submission_id = when_agent_ready(lambda: client.submit_job(entrypoint="true"), wait_s=timeout)
    while client.get_job_status(submission_id) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        assert time.time() < deadline, f"the probe job {submission_id} did not end within {timeout} s"
        time.sleep(0.5)


def start_mlflow(tmp: Path, port: int, env: dict) -> subprocess.Popen:
    """`mlflow server` on 127.0.0.1 (sqlite, artifacts on the S3 endpoint), as infra/ runs it, one worker."""
    return subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
                             "--artifacts-destination", "s3://loopfree-test/mlflow-artifacts", "--workers", "1"],
                            env={**env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # as infra/ sets it
                            stdout=open(tmp / "mlflow.log", "w"), stderr=subprocess.STDOUT)


def repo_copy(folder: Path) -> Path:
    """What a user submits from: the code, jobs and data of this repository, with the venv linked. Its
    platform/ prints MARKER when imported, so a job's output shows that it ran the uploaded tree."""
    for part in ("loopfree", "platform", "jobs", "data"):
        shutil.copytree(ROOT / part, folder / part, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / ".venv").symlink_to(BIN.parent)
    with open(folder / "platform" / "loopfree_platform" / "__init__.py", "a") as f:
        f.write(f"\nprint({MARKER!r}, flush=True)\n")
    return folder


MARKER = "loopfree_platform imported from the uploaded tree"
README_STORAGE = "storage.path=$PWD/runs/cluster"  # the README's lines keep runs in the folder they submit from


def readme_lines() -> list[str]:
    """The README's one-machine cluster commands ("The cluster path on one machine"), as written."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### The cluster path on one machine"):]
    start = section.index("```bash\n") + len("```bash\n")
    return [line for line in section[start:section.index("```", start)].splitlines() if line.strip()]


def readme_line(word: str, port: int) -> str:
    """The README line that runs `word` (e.g. "ray start"), its dashboard port 8265 replaced by `port`."""
    return next(line for line in readme_lines() if word in line).replace("8265", str(port))


def shell(line: str, repo: Path, env: dict, out: Path | None = None) -> subprocess.Popen:
    """`line` in a bash shell in `repo` with its venv active, as a user types it; its output (stdout and
    stderr) to the file `out`, or a pipe."""
    command = ["bash", "-c", f"source .venv/bin/activate && {line}"]
    args = dict(cwd=repo, env=env, text=True, stderr=subprocess.STDOUT)
    if out is None:
        return subprocess.Popen(command, stdout=subprocess.PIPE, **args)
    with open(out, "w") as f:  # the child holds its own copy of the descriptor; ours is closed at once
        return subprocess.Popen(command, stdout=f, **args)
