"""Serving and batch-generation job files: typed, validated, checked before any cluster work.

`jobs/serve.yaml` (``loopfree serve``) and `jobs/generate.yaml` (``loopfree generate``) share the model
section; the Serve application's arguments (`ServeApp`) are the same mapping the Serve config file
(`platform/serve_config.yaml`, for ``serve deploy``) passes to `loopfree_platform.serve.app:build_app`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from loopfree.seeds import MAX_SEED
from loopfree_platform import storage
from loopfree_platform.jobfile import JobError, Section, validate_file
from loopfree_platform.models import ModelSourceError, check_source

DEFAULT_TOKEN_ENV = "LOOPFREE_SERVE_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ModelSource(Section):
    source: str = Field(description="pipeline directory, s3:// prefix, or models:/<name>@<alias>")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI for models:/ sources (default: MLFLOW_TRACKING_URI)")
    endpoint_url: str | None = Field(None, description="S3 endpoint for s3:// sources (default: AWS_ENDPOINT_URL)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        try:
            check_source(v)
        except ModelSourceError as err:
            raise ValueError(str(err)) from None
        return v


class Autoscaling(Section):
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class Serving(Section):
    max_batch_size: int = Field(8, ge=1, le=256, description="images per TiUE pass, gathered from concurrent requests")
    batch_wait_timeout_s: float = Field(0.05, ge=0, le=10)
    max_prompts_per_request: int = Field(16, ge=1)
    max_prompt_chars: int = Field(1000, ge=1)
    max_body_bytes: int = Field(1 << 20, ge=1024, description="larger request bodies get 413 before they are read")
    max_concurrent_requests: int | None = Field(None, ge=1, description="requests the ingress handles at once "
                                                "(default: max(100, 4 x max_batch_size x max_replicas))")
    max_queued_requests: int = Field(100, ge=1, description="requests that may wait for one of those slots; "
                                     "beyond them 503 with Retry-After")
    retry_after_s: int = Field(1, ge=0, description="the Retry-After of that 503, in seconds")
    autoscaling: Autoscaling = Autoscaling()
    num_cpus: float = Field(1.0, ge=0, description="per model replica")
    num_gpus: float = Field(0.0, ge=0, description="per model replica")


class Auth(Section):
    token_env: str = Field(DEFAULT_TOKEN_ENV, description="environment variable holding the bearer token")
    required: bool = Field(False, description="refuse to start when the token variable is unset")


class ServeApp(Section):
    """The Serve application's arguments (build_app's `args`)."""
    model: ModelSource
    serving: Serving = Serving()
    auth: Auth = Auth()


class Http(Section):
    """The Serve HTTP proxy's settings: they hold for every application on the Serve instance this job starts
    (serve/guard.py, docs/serving.md)."""
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    request_timeout_s: float = Field(10.0, gt=0, le=3600, description="a request's line and headers, and then its "
                                     "body, must each arrive within this time (else 408 and the connection closed)")
    max_header_bytes: int = Field(16 << 10, ge=1024, description="request line plus headers; larger get 431")


class Console(Section):
    log_dir: str = Field("runs/serve", description="serve.log (Ray's logs, access logs) goes to <log_dir>/<name>/")
    every_s: float = Field(30.0, gt=0, description="seconds between the console's traffic lines")


class ServeJob(ServeApp):
    http: Http = Http()
    console: Console = Console()
    name: str = Field("loopfree", pattern=r"^[A-Za-z0-9_.-]+$")

    @model_validator(mode="before")
    @classmethod
    def _auth_beyond_loopback(cls, data: Any) -> Any:
        """An endpoint other machines can reach always requires the bearer token (auth.required forced on)."""
        if isinstance(data, dict) and isinstance(data.get("http"), dict) and isinstance(data.get("auth", {}), dict):
            if data["http"].get("host", "127.0.0.1") not in LOOPBACK:
                data = {**data, "auth": {**data.get("auth", {}), "required": True}}
        return data


def check_token(job: ServeApp, path: str | Path) -> None:
    """Where the endpoint starts (``loopfree serve``, not ``submit``): a required token must be set here."""
    if job.auth.required and not os.environ.get(job.auth.token_env, "").strip():
        beyond = isinstance(job, ServeJob) and job.http.host not in LOOPBACK
        why = f"http.host {job.http.host} is not loopback, so a token is required" if beyond else "auth.required is true"
        raise JobError(f"{path}: auth.required: {why}, but the environment variable {job.auth.token_env} is empty or "
                       "unset (export it, or use http.host: 127.0.0.1)")


class Prompts(Section):
    path: str = Field(description="prompt file, local or s3://: plain text (one per line), JSONL, or TSV")
    format: Literal["auto", "text", "jsonl", "tsv"] = "auto"
    column: str = Field("Prompt", description="prompt column (TSV) or field (JSONL)")
    id_column: str | None = Field(None, description="column/field with a stable prompt id (default: the row number)")
    limit: int | None = Field(None, ge=1, description="only the first N prompts")


class Output(Section):
    root: str = Field(description="output folder, local or s3://; images/<id>.png and manifest.jsonl go under it")
    endpoint_url: str | None = None

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        if storage.is_s3(v) and len(v.rstrip("/")) <= len("s3://"):
            raise ValueError(f"{v!r} names no bucket")
        return v


class Generation(Section):
    seed: int = Field(0, ge=0, le=MAX_SEED, description="image i (in file order) uses seed + i unless its record carries a seed")
    batch_size: int = Field(8, ge=1, le=256)
    replicas: int = Field(1, ge=1, description="model replicas in the Ray Data actor pool")
    num_cpus: float = Field(1.0, gt=0, description="per replica")
    num_gpus: float = Field(0.0, ge=0, description="per replica")


class GenerateJob(Section):
    name: str = Field("generate", pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelSource
    prompts: Prompts
    output: Output
    generation: Generation = Generation()


def load_serve_job(path: str | Path) -> ServeJob:
    return validate_file(path, ServeJob)


def load_generate_job(path: str | Path) -> GenerateJob:
    job = validate_file(path, GenerateJob)
    if not storage.is_s3(job.prompts.path) and not Path(job.prompts.path).is_file():
        raise JobError(f"{path}: prompts.path: {job.prompts.path!r} does not exist")
    return job
