"""Storage faults: the platform's S3 reads and writes through a fault-injecting proxy in front of the S3 endpoint
(moto) on 127.0.0.1. Throttling (503 SlowDown) is retried; a transfer cut half-way is retried or fails with an
error naming the object, and never leaves or returns half an object.

The storage calls here are the ones every product uses: `write_bytes` (metrics, samples, run files, generation
outputs), `read_bytes` (job files, run ids, checkpoints' verification), `upload_dir` (checkpoints, exports)
and `download_dir` (models from S3).
"""

import os
from pathlib import Path

import boto3
import pytest
from loopfree_platform import storage
from loopfree_platform.storage import StorageError

from tests.faults import FaultProxy

BUCKET = "loopfree-test"


@pytest.fixture
def s3(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint)


def payload(n: int = 300_000) -> bytes:
    return os.urandom(n)


@pytest.mark.parametrize("every", [2, 3])
def test_throttled_writes_and_reads_are_retried_and_the_bytes_arrive_whole(s3_endpoint, s3, every):
    data = payload()
    with FaultProxy(s3_endpoint, every=every, mode="503") as proxy:
        uri = f"s3://{BUCKET}/faults/throttled-{every}.bin"
        storage.write_bytes(uri, data, proxy.url)
        assert storage.read_bytes(uri, proxy.url) == data
        assert storage.exists(uri, proxy.url)
    assert proxy.injected >= 1  # the faults did happen
    assert s3.get_object(Bucket=BUCKET, Key=f"faults/throttled-{every}.bin")["Body"].read() == data


def model_folder(folder):
    for i in range(6):
        (folder / f"part{i % 2}").mkdir(parents=True, exist_ok=True)
        (folder / f"part{i % 2}" / f"f{i}.bin").write_bytes(payload(50_000 + i))
    return folder


@pytest.mark.parametrize("mode", ["503", "cut"])
def test_throttled_or_cut_folder_upload_and_download_complete(s3_endpoint, tmp_path, mode):
    source = model_folder(tmp_path / "model")
    with FaultProxy(s3_endpoint, every=3, mode=mode) as proxy:
        storage.upload_dir(source, f"s3://{BUCKET}/faults/model-{mode}", proxy.url)
        storage.download_dir(f"s3://{BUCKET}/faults/model-{mode}", tmp_path / "copy", proxy.url)
    assert proxy.injected >= 2, proxy.by_kind
    for f in source.rglob("*.bin"):
        assert (tmp_path / "copy" / f.relative_to(source)).read_bytes() == f.read_bytes()


def test_a_folder_upload_whose_transfers_are_always_cut_raises_instead_of_returning_as_done(s3_endpoint, s3,
                                                                                           tmp_path, monkeypatch):
    """pyarrow's copy_files (Ray Train's default checkpoint upload) returns without an error here and the
    objects are simply absent; storage.upload_dir (and so every checkpoint and export) must raise."""
    import pyarrow.fs as pafs

    monkeypatch.setattr(storage, "S3_ATTEMPTS", 2)
    source = model_folder(tmp_path / "model")
    with FaultProxy(s3_endpoint, every=1, mode="cut", methods=("PUT", "POST")) as proxy:
        fs, _ = storage.filesystem("s3://x", proxy.url)
        pafs.copy_files(str(source), f"{BUCKET}/faults/copy-files", destination_filesystem=fs)  # "done"
        with pytest.raises(StorageError, match=f"s3://{BUCKET}/faults/cut-folder"):
            storage.upload_dir(source, f"s3://{BUCKET}/faults/cut-folder", proxy.url)
    assert proxy.by_kind.get("cut PUT", 0) >= 6
    # the reference: the library call above reported success and left no file whole (empty objects in their
    # place, measured with pyarrow 25.0)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="faults/copy-files").get("Contents", [])
    assert [o["Key"] for o in listed if o["Key"].endswith(".bin") and o["Size"] > 0] == []


def test_a_download_cut_half_way_is_retried_or_refused_never_returned_half(s3_endpoint, s3):
    data = payload()
    s3.put_object(Bucket=BUCKET, Key="faults/cut-read.bin", Body=data)
    uri = f"s3://{BUCKET}/faults/cut-read.bin"
    with FaultProxy(s3_endpoint, every=2, mode="cut", methods=("GET",)) as proxy:
        results = []
        for _ in range(3):
            try:
                results.append(storage.read_bytes(uri, proxy.url))
            except StorageError as err:
                assert uri in str(err)
                results.append(None)
    assert proxy.injected >= 1
    assert all(r is None or r == data for r in results) and any(r == data for r in results)


def test_an_upload_cut_half_way_leaves_no_object_or_the_whole_one(s3_endpoint, s3):
    data = payload()
    key = "faults/cut-write.bin"
    with FaultProxy(s3_endpoint, every=1, mode="cut", methods=("PUT", "POST")) as proxy:
        with pytest.raises(StorageError, match=f"s3://{BUCKET}/{key}"):
            storage.write_bytes(f"s3://{BUCKET}/{key}", data, proxy.url)
    assert proxy.injected >= 1
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=key).get("Contents", [])
    assert listed == [] or s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == data


def test_an_endpoint_that_always_throttles_fails_with_an_error_naming_the_object(s3_endpoint, s3, monkeypatch):
    monkeypatch.setattr(storage, "S3_ATTEMPTS", 2)  # failing takes every retry: fewer of them, same outcome
    s3.put_object(Bucket=BUCKET, Key="faults/there.bin", Body=b"x")
    with FaultProxy(s3_endpoint, every=1, mode="503", methods=("GET", "PUT", "POST", "HEAD")) as proxy:
        with pytest.raises(StorageError, match=f"s3://{BUCKET}/faults/never.bin: .*(503|SLOW_DOWN)"):
            storage.write_bytes(f"s3://{BUCKET}/faults/never.bin", b"x", proxy.url)
        with pytest.raises(StorageError, match=f"s3://{BUCKET}/faults/there.bin: .*(503|SLOW_DOWN)"):
            storage.read_bytes(f"s3://{BUCKET}/faults/there.bin", proxy.url)
        with pytest.raises(StorageError, match=f"s3://{BUCKET}/faults/there.bin"):
            storage.exists(f"s3://{BUCKET}/faults/there.bin", proxy.url)  # never "missing" for "no answer"
    assert "never.bin" not in str(s3.list_objects_v2(Bucket=BUCKET, Prefix="faults/"))


def test_a_checkpoint_upload_reports_only_when_every_file_arrived(s3_endpoint, s3, tmp_path, monkeypatch):
    """The distillation's checkpoint_upload_fn (instead of Ray Train's copy_files): through a clean endpoint it
    returns a checkpoint holding the rank's files; through one that cuts every upload it raises, so the rank
    fails and Ray Train restarts from the last complete checkpoint instead of registering an empty one."""
    import ray.train
    from loopfree_platform.distill.checkpoint import uploader

    monkeypatch.setattr(storage, "S3_ATTEMPTS", 2)
    local = ray.train.Checkpoint.from_directory(str(model_folder(tmp_path / "rank0")))
    done = uploader(f"s3://{BUCKET}/faults/run", s3_endpoint)(local, "checkpoint_00000002")
    with done.as_directory() as d:
        assert sorted(str(p.relative_to(d)) for p in Path(d).rglob("*.bin")) == sorted(
            str(p.relative_to(local.path)) for p in Path(local.path).rglob("*.bin"))
    with FaultProxy(s3_endpoint, every=1, mode="cut", methods=("PUT", "POST")) as proxy:
        with pytest.raises(StorageError, match=f"s3://{BUCKET}/faults/run/checkpoint_00000004"):
            uploader(f"s3://{BUCKET}/faults/run", proxy.url)(local, "checkpoint_00000004")
