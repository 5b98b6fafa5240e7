"""Storage faults: the platform's S3 reads and writes through a fault-injecting proxy in front of the S3 endpoint
(moto) on 127.0.0.1. Throttling (503 SlowDown) is retried; a transfer cut half-way is retried or fails with an
error naming the object, and never leaves or returns half an object.

The storage calls here are the ones every product uses: `write_bytes` (metrics, samples, run files, generation
outputs), `read_bytes` (job files, run ids, checkpoints' verification), `upload_dir` (checkpoints, exports)
and `download_dir` (models from S3).
"""

import os

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


def test_throttled_folder_upload_and_download_complete(s3_endpoint, tmp_path):
    source = tmp_path / "model"
    for i in range(6):
        (source / f"part{i % 2}").mkdir(parents=True, exist_ok=True)
        (source / f"part{i % 2}" / f"f{i}.bin").write_bytes(payload(50_000 + i))
    with FaultProxy(s3_endpoint, every=3, mode="503") as proxy:
        storage.upload_dir(source, f"s3://{BUCKET}/faults/model", proxy.url)
        storage.download_dir(f"s3://{BUCKET}/faults/model", tmp_path / "copy", proxy.url)
    assert proxy.injected >= 2
    for f in source.rglob("*.bin"):
        assert (tmp_path / "copy" / f.relative_to(source)).read_bytes() == f.read_bytes()


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
