"""`loopfree submit`: a job file of any kind to a Ray cluster through the Jobs API.

The job file is validated on this machine first, relative to the folder that is uploaded (`--working-dir`,
the job's working directory on the cluster), then the same `loopfree <kind> <job> [--set ...]` command
runs as the job's entrypoint. Like `ray job submit`, the command waits and streams the job's output and
exits with its status; `--no-wait` detaches.

Token authentication passes through: with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)
in the environment, Ray's JobSubmissionClient adds the bearer header itself; we never print the token.
Equivalent plain command (README):
    ray job submit --address URL --working-dir . -- python -m loopfree_platform.cli distill jobs/smoke.yaml
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

# Settings a job needs on the cluster, passed from the submitting shell when set there.
PASSED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
EXCLUDES = [".venv", "runs", "mlruns", ".git", "**/__pycache__", "*.egg-info"]
PLATFORM = Path("platform") / "loopfree_platform"  # shipped as a py_module: not importable from the upload's root
KINDS = ("distill", "sweep", "evaluate", "generate")
NO_AGENT = "No available agent"  # Ray's answer while a just-started head's job agent registers
AGENT_WAIT_S = 60.0


def detect_kind(path: str | Path) -> str | None:
    """The job kind from a job file's top-level keys (None when they do not tell, or the file is unreadable):
    a sweep names its `base` job, an evaluation lists `systems`, a generation has `prompts` and `output`,
    a distillation has `training`."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(raw, dict):
        return None
    if "base" in raw:
        return "sweep"
    if "systems" in raw:
        return "evaluate"
    if "prompts" in raw and "output" in raw:
        return "generate"
    if "training" in raw or "data" in raw:
        return "distill"
    return None


def entrypoint(kind: str, job_path: str, sets: list[str] | tuple[str, ...] = (), verbose: bool = False) -> str:
    args = ["python", "-m", "loopfree_platform.cli", kind, job_path]
    for item in sets:
        args += ["--set", item]
    return shlex.join(args + (["--verbose"] if verbose else []))


def runtime_env(working_dir: str) -> dict:
    """What a submission ships: the working directory, and its `platform/loopfree_platform` as a py_module so
    the uploaded platform code is what runs (the README's `ray job submit` passes the same); the settings in
    PASSED_ENV that are set in this shell."""
    env = {"working_dir": working_dir, "excludes": EXCLUDES,
           "env_vars": {k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
    if (Path(working_dir) / PLATFORM).is_dir():
        env["py_modules"] = [str(Path(working_dir) / PLATFORM)]
    return env


def when_agent_ready(submit_job: Callable[[], str], wait_s: float = AGENT_WAIT_S, sleep=time.sleep,
                     clock=time.monotonic) -> str:
    """submit_job()'s submission id. Right after `ray start`, the dashboard answers before the head's job agent
    has registered, and Ray refuses a submission with a 500 "No available agent to submit job, please try again
    later" (a RuntimeError from the SDK). That one error is retried for up to `wait_s`, said once on stderr;
    any other error, or the same after the wait, is raised."""
    deadline, told = clock() + wait_s, False
    while True:
        try:
            return submit_job()
        except RuntimeError as err:
            if NO_AGENT not in str(err) or clock() > deadline:
                raise
            if not told:
                print(f"the cluster's job agent is not ready yet; retrying for up to {wait_s:.0f} s", file=sys.stderr,
                      flush=True)
                told = True
            sleep(1.0)


def submit(command: str, address: str | None = None, wait: bool = True, working_dir: str = ".",
           verbose: bool = False) -> int:
    """Submit `command` (an `entrypoint`) with `working_dir` uploaded; with `wait`, stream its output until it
    ends and return 0 if it succeeded, else 1. The SDK's own progress lines (packaging, uploading) show with
    `verbose` only."""
    import logging

    from ray.job_submission import JobStatus, JobSubmissionClient

    # these set their own level (INFO) when imported; the private module's name: no public switch (tests/test_ray_private_apis.py)
    if not verbose:
        for name in ("ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk",
                     "ray._private.runtime_env.packaging"):
            logging.getLogger(name).setLevel(logging.WARNING)

    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    try:
        client = JobSubmissionClient(address)
    except ConnectionError as err:
        print(f"error: cannot use the Ray Jobs API at {address}: {err} (--address or RAY_ADDRESS: the dashboard URL)",
              file=sys.stderr)
        return 1
    submission_id = when_agent_ready(lambda: client.submit_job(entrypoint=command,
                                                              runtime_env=runtime_env(working_dir)))
    print(f"submitted {submission_id}", flush=True)
    hint = f"--address {shlex.quote(address)} {submission_id}"
    if not wait:
        print(f"follow: ray job logs --follow {hint}\nstop:   ray job stop {hint}", flush=True)
        return 0

    async def stream() -> None:
        async for lines in client.tail_job_logs(submission_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(stream())
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running (stop it with: ray job stop {hint})", flush=True)
        return 130
    status = client.get_job_status(submission_id)
    print(f"job {submission_id} ended: {status}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
