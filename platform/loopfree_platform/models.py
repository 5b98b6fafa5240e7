"""Finished TiUE models for serving and batch generation: where they come from and what version they are.

A model source is one of
- a local directory in diffusers layout (what `loopfree distill` exports),
- an ``s3://`` prefix holding such a directory (downloaded once into a local cache),
- an MLflow registry URI, ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` (what the tracking
  step registers; the pipeline is the pyfunc model's ``pipeline`` artifact).
Every image written or served names the model version it came from, so results stay traceable.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from loopfree_platform import storage

REGISTRY = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))$")


class ModelSourceError(ValueError):
    """A model source that cannot be resolved; the message names the source."""


@dataclass(frozen=True)
class ResolvedModel:
    local_dir: Path  # a diffusers-layout TiUE pipeline on this machine
    name: str
    version: str  # registry version, or "sha-<12 hex>" of the directory's listing for plain directories
    source: str


def check_source(source: str) -> None:
    """Static checks a job file can get before any cluster work: the form of the URI, a local dir exists."""
    if source.startswith("models:/"):
        if not REGISTRY.match(source):
            raise ModelSourceError(f"{source!r} is not a registry URI: use models:/<name>@<alias> or models:/<name>/<version>")
    elif storage.is_s3(source):
        if len(source.rstrip("/")) <= len("s3://"):
            raise ModelSourceError(f"{source!r} names no bucket")
    elif not (Path(source) / "model_index.json").is_file():
        raise ModelSourceError(f"{source!r} is not a pipeline directory (no model_index.json in it)")


def absolute_source(source: str) -> str:
    """Local model paths made absolute: replicas and workers run in other folders."""
    if source.startswith("models:/") or storage.is_s3(source):
        return source
    return str(Path(source).resolve())


def _cache_root() -> Path:
    return Path(os.environ.get("LOOPFREE_CACHE", Path.home() / ".cache" / "loopfree")) / "models"


def local_model_dir(uri: str, endpoint: str | None) -> Path:
    if not storage.is_s3(uri):
        return Path(uri)
    target = Path(tempfile.gettempdir()) / "loopfree-models" / uri.replace("s3://", "").replace("/", "_")
    if not (target / ".complete").exists():
        storage.download_dir(uri, target, endpoint)
        (target / ".complete").touch()
    return target


def directory_version(local_dir: Path) -> str:
    """A cheap, stable fingerprint of a pipeline directory: its file names and sizes plus every JSON config.
    (Hashing multi-GB weights on every replica start would cost minutes; a retrained model differs in
    its configs' content or its files' sizes only rarely, so registry versions are the robust choice.)"""
    digest = hashlib.sha256()
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(local_dir).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
    return "sha-" + digest.hexdigest()[:12]


def _find_pipeline(root: Path) -> Path:
    hits = sorted(root.rglob("model_index.json"), key=lambda p: len(p.parts))
    if not hits:
        raise ModelSourceError(f"no pipeline (model_index.json) under {root}")
    return hits[0].parent


def _from_registry(source: str, tracking_uri: str | None) -> ResolvedModel:
    import mlflow
    from mlflow.tracking import MlflowClient

    from loopfree_platform.runtime import fluent_tracking_uri

    match = REGISTRY.match(source)
    if not match:
        raise ModelSourceError(f"{source!r} is not a registry URI: use models:/<name>@<alias> or models:/<name>/<version>")
    name = match["name"]
    client = MlflowClient(tracking_uri)
    try:
        version = match["version"] or client.get_model_version_by_alias(name, match["alias"]).version
    except mlflow.exceptions.MlflowException as err:
        raise ModelSourceError(f"{source}: {err.message}") from None
    target = _cache_root() / "registry" / name / str(version)
    if not (target / ".complete").exists():
        # models:/ URIs resolve through the registry URI, which follows the fluent tracking URI, not the argument
        with fluent_tracking_uri(tracking_uri) if tracking_uri else contextlib.nullcontext():
            mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(target))
        (target / ".complete").touch()
    return ResolvedModel(_find_pipeline(target), name, str(version), source)


def resolve(source: str, tracking_uri: str | None = None, endpoint_url: str | None = None) -> ResolvedModel:
    """A local directory for any model source, downloading (once) what lives in S3 or the registry."""
    check_source(source)
    if source.startswith("models:/"):
        return _from_registry(source, tracking_uri)
    if storage.is_s3(source):
        key = hashlib.sha256(f"{endpoint_url}|{source}".encode()).hexdigest()[:16]
        target = _cache_root() / "s3" / key
        if not (target / ".complete").exists():
            storage.download_dir(source, target, endpoint_url)
            (target / ".complete").touch()
        local = target
    else:
        local = Path(source).resolve()
    name = "/".join(Path(source.rstrip("/")).parts[-2:])  # "quickstart-fashion/export" says more than "export"
    return ResolvedModel(local, name, directory_version(local), source)


def load_pipeline(model: ResolvedModel, device: str = "auto", dtype: str = "auto"):
    """The TiUE pipeline of a resolved model on a device; fp16 on CUDA unless told otherwise."""
    import torch

    from loopfree.pipeline import TiUEPipeline

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "fp16" if device.startswith("cuda") else "fp32"
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    pipe = TiUEPipeline.from_pretrained(str(model.local_dir), torch_dtype=torch_dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def describe(pipe, model: ResolvedModel) -> dict:
    """What `GET /model` and the generation manifest say about a model."""
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return {"name": model.name, "version": model.version, "source": model.source, "mode": pipe.config.mode,
            "num_steps": pipe.config.num_steps, "timesteps": list(pipe.config.timesteps),
            "resolution": pipe.unet.config.sample_size * vae_scale}
