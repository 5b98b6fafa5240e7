"""Local folders and s3:// URIs behind one small interface (pyarrow's filesystems; no s3fs, docs/architecture.md).

The S3 endpoint comes from standard settings only: an explicit ``endpoint_url`` from the job file, else
``AWS_ENDPOINT_URL``, else AWS itself. Credentials come from the standard AWS chain (environment,
profile, instance role), never from job files.
"""

from __future__ import annotations

import os
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import pyarrow.fs as pafs

T = TypeVar("T")


# S3 throttles (503 SlowDown) and drops connections under load. The SDK retries each request
# (S3_SDK_ATTEMPTS); a call that still fails is retried whole (S3_ATTEMPTS, with backoff), which is safe
# because every call here is idempotent and an S3 object appears only once completely written
# (docs/reliability.md, tests/integration/test_storage_faults.py).
S3_SDK_ATTEMPTS = 3
S3_ATTEMPTS = int(os.environ.get("LOOPFREE_S3_ATTEMPTS", "4"))
COPY_THREADS = 8  # files of a folder copied side by side (checkpoint shards, model components)
COPY_CHUNK = 8 << 20  # bytes per read: a multi-GB shard never sits in memory whole


class StorageError(OSError):
    """A storage call that failed after its retries; the message names the object or folder."""


def _retried(uri: str, call: Callable[[], T]) -> T:
    """call(), retried whole for an s3:// URI; a final failure names the URI (a missing object stays
    FileNotFoundError: nothing to retry)."""
    attempts = S3_ATTEMPTS if is_s3(uri) else 1
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except FileNotFoundError:
            raise
        except OSError as err:
            if attempt == attempts:
                raise StorageError(f"{uri}: {err}") from err
            time.sleep(min(5.0, 0.25 * 2 ** (attempt - 1)))


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem(uri: str, endpoint_url: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or an s3://bucket/key URI."""
    if is_s3(uri):
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL")
        kwargs = {"region": os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1")),
                  "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=S3_SDK_ATTEMPTS),
                  "allow_delayed_open": True}  # an object under 5 MB is one PUT, not a multipart upload
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
    info = _retried(uri, lambda: fs.get_file_info(path))
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{uri} does not exist")
    if info.type == pafs.FileType.File:
        return [uri if is_s3(uri) else path]
    found = _retried(uri, lambda: fs.get_file_info(pafs.FileSelector(path, recursive=True)))
    files = sorted(f.path for f in found if f.type == pafs.FileType.File and not f.base_name.startswith("."))
    return [("s3://" + f) if is_s3(uri) else f for f in files]


def exists(uri: str, endpoint_url: str | None = None) -> bool:
    """True or False from the store's answer; a store that does not answer raises (after retries), so a
    throttled check is never mistaken for a missing object (a run id, a checkpoint)."""
    fs, path = filesystem(uri, endpoint_url)
    return _retried(uri, lambda: fs.get_file_info(path).type != pafs.FileType.NotFound)


def upload_dir(local_dir: str | Path, uri: str, endpoint_url: str | None = None) -> None:
    """Copy a local folder to `uri`; returns only when every file is there with its size."""
    fs, path = filesystem(uri, endpoint_url)
    fs.create_dir(path, recursive=True)  # S3: no-op; local: the folder
    copy_tree(pafs.LocalFileSystem(), str(Path(local_dir).resolve()), fs, path, uri)


def download_dir(uri: str, local_dir: str | Path, endpoint_url: str | None = None) -> Path:
    """Copy the folder `uri` to a local folder; returns only when every file is there with its size."""
    fs, path = filesystem(uri, endpoint_url)
    Path(local_dir).mkdir(parents=True, exist_ok=True)
    copy_tree(fs, path, pafs.LocalFileSystem(), str(Path(local_dir).resolve()), uri)
    return Path(local_dir)


def copy_tree(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str, uri: str) -> None:
    """Copy every file below `src` to the same relative path below `dst`, then check every one arrived with
    its size; StorageError names `uri` and the files that did not.

    Not pyarrow's `copy_files`: when an upload still fails after the SDK's retries it logs "Error ignored
    when destroying file" and returns as if done, with an empty object in the file's place (pyarrow 25.0,
    tests/integration/test_storage_faults.py). Here each file is copied with an explicit close, whose failure raises, and retried
    whole (docs/reliability.md, "Storage faults")."""
    listed = _retried(uri, lambda: src_fs.get_file_info(pafs.FileSelector(src, recursive=True)))
    sizes = {posixpath.relpath(f.path, src): f.size for f in listed if f.type == pafs.FileType.File}

    def copy(rel: str) -> None:
        target = posixpath.join(dst, rel)
        if isinstance(dst_fs, pafs.LocalFileSystem):
            dst_fs.create_dir(posixpath.dirname(target), recursive=True)
        with src_fs.open_input_stream(posixpath.join(src, rel)) as f, dst_fs.open_output_stream(target) as out:
            while chunk := f.read(COPY_CHUNK):
                out.write(chunk)

    with ThreadPoolExecutor(max_workers=COPY_THREADS) as pool:
        for done in [pool.submit(_retried, f"{uri} ({rel})", lambda rel=rel: copy(rel)) for rel in sizes]:
            done.result()
    arrived = _retried(uri, lambda: dst_fs.get_file_info(pafs.FileSelector(dst, recursive=True)))
    got = {posixpath.relpath(f.path, dst): f.size for f in arrived if f.type == pafs.FileType.File}
    wrong = sorted(rel for rel, size in sizes.items() if got.get(rel) != size)
    if wrong:
        raise StorageError(f"{uri}: {len(wrong)} file(s) missing or short after the copy: {', '.join(wrong[:5])}")


def write_bytes(uri: str, data: bytes, endpoint_url: str | None = None) -> None:
    """Write a whole object. Atomic on both sides, so a reader (or a resumed job) never sees half a file:
    an S3 PUT is all-or-nothing, a local file is written aside and renamed into place."""
    fs, path = filesystem(uri, endpoint_url)
    if is_s3(uri):
        def put() -> None:
            with fs.open_output_stream(path) as out:  # S3 needs no folder: no marker object first
                out.write(data)

        _retried(uri, put)
        return
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = Path(posixpath.dirname(path)) / f".{posixpath.basename(path)}.{os.getpid()}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, path)


def delete(uri: str, endpoint_url: str | None = None) -> None:
    fs, path = filesystem(uri, endpoint_url)
    fs.delete_file(path)


def read_bytes(uri: str, endpoint_url: str | None = None) -> bytes:
    fs, path = filesystem(uri, endpoint_url)

    def get() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()

    return _retried(uri, get)
