"""The job-file base shared by every product: YAML loading, validation that names the key, redaction.

A job file is YAML validated against a pydantic schema built from `Section`s: unknown keys and wrong
types are errors, and every message names the file and the key (``data.format: ...``). Secrets never
reach a printed or logged job (`redact`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

SECRET_WORDS = ("key", "token", "secret", "password", "credential")


class JobError(ValueError):
    """A job file that cannot run; the message names the file and the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{key}: {msg}")
    return "\n  ".join(lines)


def validate_file(path: str | Path, schema: type[Section]) -> Section:
    """Read a YAML job file (safely) and validate it against a schema; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"job file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())  # safe_load: no arbitrary object construction
    except yaml.YAMLError as err:
        raise JobError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise JobError(f"{path}: the top level must be a mapping of sections")
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        raise JobError(f"{path}: invalid job file:\n  {format_errors(err)}") from None


def _secret_key(key: Any) -> bool:
    words = str(key).lower().replace("-", "_").split("_")  # "api_key" is secret, "tokenizer" is not
    return any(w in words for w in SECRET_WORDS)


URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):(?P<password>[^@\s/]+)@")


def _env_secrets() -> list[str]:
    """Values of environment variables whose name looks secret (AWS_SECRET_ACCESS_KEY, RAY_AUTH_TOKEN,
    MLFLOW_TRACKING_PASSWORD, LOOPFREE_SERVE_TOKEN, ...), longest first so no fragment survives."""
    values = {v for k, v in os.environ.items() if _secret_key(k) and len(v) >= 4}
    return sorted(values, key=len, reverse=True)


def redact(data: Any) -> Any:
    """Replace values whose key looks secret (keys, tokens, passwords), passwords inside URLs
    (scheme://user:password@host), and any string value of a secret-looking environment variable."""
    if isinstance(data, dict):
        return {k: "***" if _secret_key(k) and v else redact(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    if isinstance(data, str):
        data = URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", data)
        for secret in _env_secrets():
            data = data.replace(secret, "***")
    return data
