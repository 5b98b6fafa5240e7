"""Local folders and s3:// URIs behind one small interface (pyarrow's filesystems; no s3fs, docs/architecture.md).

The S3 endpoint comes from standard settings only: an explicit ``endpoint_url`` from the job file, else
``AWS_ENDPOINT_URL``, else AWS itself. Credentials come from the standard AWS chain (environment,
profile, instance role), never from job files.
"""

from __future__ import annotations

import os
import posixpath
from pathlib import Path

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem(uri: str, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3://bucket/key URI."""
    if is_s3(uri):
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        kwargs = {"region": os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))}
        if endpoint:
            kwargs["endpoint_override"] = endpoint
            kwargs["scheme"] = "https" if endpoint.startswith("https") else "http"
        return pafs.S3FileSystem(**kwargs), uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).resolve())


def join(prefix: str, *parts: str) -> str:
    """Join user-derived names under a prefix; refuses names that would escape it ('..', absolute)."""
    for part in parts:
        if part.startswith("/") or ".." in part.replace("\\", "/").split("/"):
            raise ValueError(f"path component {part!r} would escape {prefix!r}")
    return posixpath.join(prefix.rstrip("/"), *parts)


def list_files(uri: str, endpoint_url: str | None = None) -> list[str]:
    """A file URI as itself, a folder URI as the sorted files below it (same scheme as the input)."""
    fs, path = filesystem(uri, endpoint_url)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    if info.type == pafs.FileType.File:
        return [uri if is_s3(uri) else path]
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(f.path for f in found if f.type == pafs.FileType.File and not f.base_name.startswith("."))
    return [("s3://" + f) if is_s3(uri) else f for f in files]


def exists(uri: str, endpoint_url: str | None = None) -> bool:
    fs, path = filesystem(uri, endpoint_url)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def upload_dir(local_dir: str | Path, uri: str, endpoint_url: str | None = None) -> None:
    fs, path = filesystem(uri, endpoint_url)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(str(Path(local_dir).resolve()), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download_dir(uri: str, local_dir: str | Path, endpoint_url: str | None = None) -> Path:
    fs, path = filesystem(uri, endpoint_url)
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    pafs.copy_files(path, str(Path(local_dir).resolve()), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return Path(local_dir)


def write_bytes(uri: str, data: bytes, endpoint_url: str | None = None) -> None:
    """Write a whole object. Atomic on both sides, so a reader (or a resumed job) never sees half a file:
    an S3 PUT is all-or-nothing, a local file is written aside and renamed into place."""
    fs, path = filesystem(uri, endpoint_url)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    if is_s3(uri):
        with fs.open_output_stream(path) as out:
            out.write(data)
        return
    tmp = Path(posixpath.dirname(path)) / f".{posixpath.basename(path)}.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def delete(uri: str, endpoint_url: str | None = None) -> None:
    fs, path = filesystem(uri, endpoint_url)
    fs.delete_file(path)


def read_bytes(uri: str, endpoint_url: str | None = None) -> bytes:
    fs, path = filesystem(uri, endpoint_url)
    with fs.open_input_stream(path) as f:
        return f.read()
