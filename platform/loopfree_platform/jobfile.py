"""The job-file base shared by every product: YAML loading, validation that names the key, redaction.

A job file is YAML validated against a pydantic schema built from `Section`s: unknown keys, keys written
twice and wrong types are errors, and every message names the file and the key (``data.format: ...``).
Secrets never reach a printed or logged job (`redact`).
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
    # allow_inf_nan off: YAML's .nan and .inf are floats, and .inf passes every lower bound (console.every_s: .inf was
    # a console that never reports); a NaN is refused by any bound, and now by a field without one too
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no arbitrary objects) for `load_yaml`, which also refuses duplicated keys."""


MERGE_TAG = "tag:yaml.org,2002:merge"


def _refuse_duplicates(loader: StrictLoader, node: yaml.Node, path: str, seen: set[int]) -> None:
    """Walk a composed document: the keys a mapping writes must be distinct, at any depth. Keys brought in by a
    merge key (``<<: *defaults``) are not counted: overriding them is what merging is for."""
    if id(node) in seen:  # an alias: its anchor's node was checked where it was written
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicates(loader, item, f"{path}[{i}]", seen)
    if not isinstance(node, yaml.MappingNode):
        return
    first: dict[Any, int] = {}
    for key_node, value_node in node.value:
        if key_node.tag == MERGE_TAG:
            _refuse_duplicates(loader, value_node, path, seen)
            continue
        key = loader.construct_object(key_node, deep=True)  # so that `true` and `yes`, or `1` and `0x1`, are one key
        name = f"{path}.{key}" if path else str(key)
        line = key_node.start_mark.line + 1
        try:
            if key in first:
                raise JobError(f"duplicate key {name!r} at line {line} (first at line {first[key]})")
            first[key] = line
        except TypeError:  # an unhashable key: construction refuses it below
            pass
        _refuse_duplicates(loader, value_node, name, seen)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses a key written twice in one mapping (JobError naming the dotted key and
    both lines): safe_load keeps the last one silently, so a second ``training:`` section would replace the
    first without a word (docs/jobs.md). Raises yaml.YAMLError for text that is not YAML."""
    loader = StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicates(loader, node, "", set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """A YAML file through `load_yaml`; every error is a JobError that starts with the file's path."""
    try:
        return load_yaml(Path(path).read_text())
    except yaml.YAMLError as err:
        raise JobError(f"{path}: not valid YAML: {err}") from None
    except JobError as err:
        raise JobError(f"{path}: {err}") from None


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
            value = load_yaml(text)  # 20 -> int, 2.0 -> float, [a, b] -> list, null -> None
        except yaml.YAMLError as err:
            raise JobError(f"--set {key}: the value is not valid YAML: {err}") from None
        except JobError as err:
            raise JobError(f"--set {key}: {err}") from None
        if (other := overlapping(key, sets)) is not None:  # the later one would silently win
            raise JobError(f"--set {key}: named twice (also by --set {other})")
        sets[key] = value
    return sets


def overlapping(key: str, keys) -> str | None:
    """The first of `keys` that names the same dotted key as `key`, or a section above or below it."""
    return next((k for k in keys if k == key or k.startswith(key + ".") or key.startswith(k + ".")), None)


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
    """Read a YAML job file (`read_yaml`), apply the ``--set`` overrides in effect (`overrides`) and validate it
    against a schema; every error is one line ``<file>: <key>: <message>``."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"job file {path} does not exist")
    raw = read_yaml(path)  # safe: no arbitrary object construction; strict: no duplicated keys
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
