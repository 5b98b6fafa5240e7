"""Finished TiUE models for serving and batch generation: where they come from and what version they are.

A model source is one of
- a local directory in diffusers layout (what `loopfree distill` exports),
- an ``s3://`` prefix holding such a directory (downloaded once into the local model cache),
- an MLflow registry URI, ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` (what the tracking
  step registers; the pipeline is the pyfunc model's ``pipeline`` artifact).
Every image written or served names the model version it came from, so results stay traceable.

The model cache (``$LOOPFREE_CACHE/models``, default ``~/.cache/loopfree/models``) is the one place where
remote models land on a machine: serve replicas, generation and evaluation actors and distillation
workers all go through `download_once`, keyed by (endpoint, URI). Several processes on one node may fill
the same entry at once (every Train worker of a node does): each downloads into its own temporary
folder beside the entry and renames it into place, an atomic step, so a reader sees no entry or a
complete one, never half a download.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
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


def cache_dir(endpoint: str | None, uri: str) -> Path:
    """The cache entry of `uri` as read through `endpoint` (an S3 endpoint, or a tracking URI for the registry):
    the same path in the same bucket behind two endpoints is two different models."""
    key = hashlib.sha256(f"{endpoint or ''}|{uri}".encode()).hexdigest()[:24]
    return _cache_root() / key


def download_once(endpoint: str | None, uri: str, fill: Callable[[Path], object]) -> Path:
    """The cache entry of (endpoint, uri), filled by `fill(folder)` if it is not there yet.

    Safe when several processes fill the same entry at once: each fills a private temporary folder next
    to the entry and renames it into place. Renaming a folder is atomic, and it fails when the entry
    already exists: the process that loses the race discards its copy and uses the winner's."""
    target = cache_dir(endpoint, uri)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        fill(partial)
        try:
            os.rename(partial, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # the loser's copy, or what a failed fill left
    return target


def local_model_dir(uri: str, endpoint_url: str | None = None) -> Path:
    """A local directory for a model directory given as a local path or an s3:// prefix (downloaded once)."""
    if not storage.is_s3(uri):
        return Path(uri)
    endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")  # the endpoint storage.filesystem will use
    return download_once(endpoint, uri, lambda folder: storage.download_dir(uri, folder, endpoint))


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
    from loopfree_platform import tracking

    match = REGISTRY.match(source)
    if not match:
        raise ModelSourceError(f"{source!r} is not a registry URI: use models:/<name>@<alias> or models:/<name>/<version>")
    name = match["name"]
    try:
        version = match["version"] or tracking.registry_version(tracking_uri, name, match["alias"])
    except LookupError as err:
        raise ModelSourceError(f"{source}: {err}") from None
    target = download_once(tracking_uri or tracking.default_uri(), f"models:/{name}/{version}",
                           lambda folder: tracking.download_model(tracking_uri, name, version, folder))
    return ResolvedModel(_find_pipeline(target), name, str(version), source)


def resolve(source: str, tracking_uri: str | None = None, endpoint_url: str | None = None) -> ResolvedModel:
    """A local directory for any model source, downloading (once) what lives in S3 or the registry."""
    check_source(source)
    if source.startswith("models:/"):
        return _from_registry(source, tracking_uri)
    local = local_model_dir(source, endpoint_url) if storage.is_s3(source) else Path(source).resolve()
    name = "/".join(Path(source.rstrip("/")).parts[-2:])  # "quickstart-fashion/export" says more than "export"
    return ResolvedModel(local, name, directory_version(local), source)


def load_pipeline(model: ResolvedModel, device: str = "auto", dtype: str = "auto"):
    """The TiUE pipeline of a resolved model on a device; fp16 on CUDA unless told otherwise."""
    import torch

    from loopfree.pipeline import TiUEPipeline
    from loopfree.systems import DTYPES

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "fp16" if device.startswith("cuda") else "fp32"
    pipe = TiUEPipeline.from_pretrained(str(model.local_dir), torch_dtype=DTYPES[dtype]).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def describe(pipe, model: ResolvedModel) -> dict:
    """What `GET /model` and the generation manifest say about a model."""
    vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    return {"name": model.name, "version": model.version, "source": model.source, "mode": pipe.config.mode,
            "num_steps": pipe.config.num_steps, "timesteps": list(pipe.config.timesteps),
            "resolution": pipe.unet.config.sample_size * vae_scale}
