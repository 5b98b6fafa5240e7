"""The job-file base shared by every product: YAML loading, validation that names the key, redaction.

A job file is YAML validated against a pydantic schema built from `Section`s: unknown keys and wrong
types are errors, and every message names the file and the key (``data.format: ...``). Secrets never
reach a printed or logged job (`redact`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

SECRET_WORDS = ("key", "token", "secret", "password", "credential")
# A job's or sweep's name: it names a folder (the run's), MLflow runs and Ray Train runs.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


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


# `--set section.key=value` overrides of the command line, applied by `validate_file` to the job file it reads
# (the one the command names; a sweep's base job is not read through it).
_OVERRIDES: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("job_overrides", default=None)


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``["training.max_steps=20", "method.guidance_scale=2.0"]`` -> {dotted key: value parsed as YAML}."""
    sets: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(part.strip() for part in key.split(".")):
            raise JobError(f"--set {item!r}: expected section.key=value, e.g. training.max_steps=20")
        try:
            sets[key] = yaml.safe_load(text)  # safe_load: 20 -> int, 2.0 -> float, [a, b] -> list, null -> None
        except yaml.YAMLError as err:
            raise JobError(f"--set {key}: the value is not valid YAML: {err}") from None
    return sets


def apply_sets(raw: dict[str, Any], sets: dict[str, Any]) -> dict[str, Any]:
    """The job dict with dotted keys set; a missing section is created, a non-mapping on the way is an error."""
    out = dict(raw)
    for dotted, value in sets.items():
        *parents, leaf = dotted.split(".")
        node, done = out, []
        for part in parents:
            done.append(part)
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise JobError(f"--set {dotted}: {'.'.join(done)} is not a section")
            node[part] = child = dict(child)  # copies: the caller's dict is left as it was
            node = child
        node[leaf] = value
    return out


@contextlib.contextmanager
def overrides(sets: dict[str, Any]):
    """Within the block, `validate_file` applies these ``--set`` overrides before it validates."""
    token = _OVERRIDES.set(dict(sets))
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def _error_lines(err: ValidationError, sets: dict[str, Any]) -> list[str]:
    """``key: message`` per error, marked when the key came from (or lies under) a --set override."""
    lines = []
    for line in format_errors(err).split("\n  "):
        key = line.split(": ", 1)[0]
        hit = next((s for s in sets if s == key or s.startswith(key + ".") or key.startswith(s + ".")), None)
        lines.append(f"{line} (from --set {hit})" if hit else line)
    return lines


def validate_file(path: str | Path, schema: type[Section]) -> Section:
    """Read a YAML job file (safely), apply the ``--set`` overrides in effect (`overrides`) and validate it
    against a schema; every error is one line ``<file>: <key>: <message>``."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"job file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())  # safe_load: no arbitrary object construction
    except yaml.YAMLError as err:
        raise JobError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise JobError(f"{path}: the top level must be a mapping of sections")
    sets = _OVERRIDES.get() or {}
    try:
        raw = apply_sets(raw, sets)
    except JobError as err:
        raise JobError(f"{path}: {err}") from None
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        raise JobError("\n".join(f"{path}: {line}" for line in _error_lines(err, sets))) from None


def _secret_key(key: Any) -> bool:
    words = str(key).lower().replace("-", "_").split("_")  # "api_key" is secret, "tokenizer" is not
    if words[-1] == "env":  # "token_env" names an environment variable; the name is not the secret
        return False
    return any(w in words for w in SECRET_WORDS)


URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*):(?P<password>[^@\s/]+)@")


def _env_secrets() -> list[str]:
    """Values of environment variables whose name looks secret (AWS_SECRET_ACCESS_KEY, RAY_AUTH_TOKEN,
    MLFLOW_TRACKING_PASSWORD, LOOPFREE_SERVE_TOKEN, ...), longest first so no fragment survives."""
    values = {v for k, v in os.environ.items() if _secret_key(k) and len(v) >= 4}
    return sorted(values, key=len, reverse=True)


def redact(data: Any) -> Any:
    """A job (or any structure) with the values of secret-looking keys (keys, tokens, passwords) and the
    passwords inside URLs (scheme://user:password@host) replaced by ***, and everything else exactly as
    written, so that a job reproduced from its job.resolved.yaml is the original, secrets aside."""
    if isinstance(data, dict):
        return {k: "***" if _secret_key(k) and v else redact(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redact(v) for v in data]
    if isinstance(data, str):
        return URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", data)
    return data


def redact_text(text: str) -> str:
    """Free text (an error message, a library's exception): URL passwords, and any value of a secret-looking
    environment variable, which a library may have put into its message."""
    text = redact(text)
    for secret in _env_secrets():
        text = text.replace(secret, "***")
    return text
