"""`loopfree submit`: a job file to a Ray cluster through the Jobs API.

Token authentication passes through: with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH)
in the environment, Ray's JobSubmissionClient adds the bearer header itself; we never print the token.
Equivalent plain command (docs/cluster.md):
    ray job submit --address URL --working-dir . -- python -m loopfree_platform.cli distill jobs/smoke.yaml
"""

from __future__ import annotations

import asyncio
import os
import sys

from ray.job_submission import JobStatus, JobSubmissionClient

# Settings a job needs on the cluster, passed from the submitting shell when set there.
PASSED_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
EXCLUDES = [".venv", "runs", ".git", "**/__pycache__", "*.egg-info"]


def entrypoint(job_path: str) -> str:
    return f"python -m loopfree_platform.cli distill {job_path}"


def submit(job_path: str, address: str | None = None, follow: bool = False, working_dir: str = ".") -> int:
    address = address or os.environ.get("RAY_ADDRESS") or "http://127.0.0.1:8265"
    client = JobSubmissionClient(address)
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    submission_id = client.submit_job(entrypoint=entrypoint(job_path),
                                      runtime_env={"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env})
    print(f"submitted {submission_id}", flush=True)
    if not follow:
        return 0

    async def stream() -> None:
        async for lines in client.tail_job_logs(submission_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(stream())
    status = client.get_job_status(submission_id)
    print(f"job {submission_id} ended: {status}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1
