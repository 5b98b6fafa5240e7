"""The download-once model cache (loopfree_platform.models): several processes on one node filling the same
entry at once all end up with one complete copy (every Train worker of a node resolves the same teacher)."""

import multiprocessing
import os
from pathlib import Path

import pytest
from loopfree_platform import storage
from loopfree_platform.models import cache_dir, download_once, local_model_dir

FILES = {"model_index.json": b'{"_class_name": "TiUEPipeline"}', "unet/diffusion_pytorch_model.safetensors": b"\0" * 200_000}


def _listing(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def _resolve_s3(uri: str, barrier, results) -> None:
    barrier.wait()  # both processes find the entry missing and download at the same time
    folder = local_model_dir(uri)
    results.put((str(folder), _listing(folder)))


def _fill_and_race(uri: str, barrier, results) -> None:
    def fill(folder: Path) -> None:
        for name, data in FILES.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        (folder / "filled_by").write_text(str(os.getpid()))
        barrier.wait()  # both copies are complete before either is renamed into place: one rename must lose

    folder = download_once("local", uri, fill)
    results.put((str(folder), _listing(folder), (folder / "filled_by").read_text()))


def _run_two(target, *args) -> list:
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, as two Ray workers would be
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOOPFREE_CACHE", str(tmp_path / "cache"))  # inherited by the spawned processes
    return tmp_path / "cache" / "models"


def test_two_processes_download_one_s3_model(s3_endpoint, tmp_path, cache):
    source = tmp_path / "model"
    for name, data in FILES.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    uri = "s3://loopfree-test/models/cache-race"
    storage.upload_dir(source, uri)
    (a_dir, a_files), (b_dir, b_files) = _run_two(_resolve_s3, uri)
    expected = {name: len(data) for name, data in FILES.items()}
    assert a_dir == b_dir == str(cache_dir(s3_endpoint, uri))
    assert a_files == b_files == expected
    assert [p.name for p in cache.iterdir()] == [Path(a_dir).name]  # no partial copies left behind


def test_the_process_that_loses_the_race_uses_the_winners_copy(cache):
    (a_dir, a_files, a_by), (b_dir, b_files, b_by) = _run_two(_fill_and_race, "s3://bucket/model")
    assert a_dir == b_dir and a_files == b_files and a_by == b_by  # one copy, filled by the winner
    assert set(a_files) == {*FILES, "filled_by"}
    assert [p.name for p in cache.iterdir()] == [Path(a_dir).name]


def test_a_failed_download_leaves_no_entry(cache):
    def fail(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"\0")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        download_once("local", "s3://bucket/broken", fail)
    assert not cache_dir("local", "s3://bucket/broken").exists() and list(cache.iterdir()) == []
    calls = []
    folder = download_once("local", "s3://bucket/broken", lambda f: calls.append((f / "ok").write_text("1")))
    assert (folder / "ok").read_text() == "1" and len(calls) == 1
    assert download_once("local", "s3://bucket/broken", lambda f: calls.append(1)) == folder and len(calls) == 1


def test_the_key_includes_the_endpoint(cache):
    assert cache_dir("http://127.0.0.1:9000", "s3://b/m") != cache_dir("http://127.0.0.1:9001", "s3://b/m")
    assert cache_dir(None, "s3://b/m") == cache_dir(None, "s3://b/m") != cache_dir(None, "s3://b/n")
    assert local_model_dir("some/local/dir") == Path("some/local/dir")  # local paths are used in place
