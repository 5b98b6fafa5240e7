"""One driver per run name: the lease in the run folder (local and on a real S3 endpoint), and the CLI
refusing a second driver before it starts MLflow or Ray."""

import json
import socket
import subprocess
import sys
import time

import pytest
from loopfree_platform import storage
from loopfree_platform.cli import main
from loopfree_platform.distill import lease as lease_mod
from loopfree_platform.distill.lease import RunLease, RunLeaseError


def _hold(uri: str, endpoint=None, **fields) -> None:
    holder = {"id": "other", "host": socket.gethostname(), "pid": 1, "started": time.time(), "renewed": time.time()}
    storage.write_bytes(uri, json.dumps({**holder, **fields}).encode(), endpoint)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_second_driver_refuses_naming_the_holder_until_the_first_releases(where, tmp_path, request):
    endpoint = request.getfixturevalue("s3_endpoint") if where == "s3" else None
    run_dir = f"s3://loopfree-test/lease-{time.time_ns()}/run" if where == "s3" else str(tmp_path / "run")
    first, second = RunLease(run_dir, endpoint), RunLease(run_dir, endpoint)
    first.acquire()
    with pytest.raises(RunLeaseError, match=rf"held by another driver \(pid {first.me['pid']} on {socket.gethostname()}"):
        second.acquire()
    first.release()
    assert not storage.exists(first.uri, endpoint)
    second.acquire()  # released: free again
    assert json.loads(storage.read_bytes(second.uri, endpoint))["id"] == second.me["id"]
    second.release()


def test_a_lease_of_a_dead_process_or_not_renewed_is_taken_over(tmp_path):
    run_dir = str(tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    _hold(storage.join(run_dir, "driver.lease.json"), pid=int(dead.stdout))  # a killed driver on this host
    with RunLease(run_dir):
        pass
    _hold(storage.join(run_dir, "driver.lease.json"), host="another-node", pid=1,
          renewed=time.time() - lease_mod.STALE_S - 1)  # a driver on a machine that went away
    with RunLease(run_dir):
        pass
    _hold(storage.join(run_dir, "driver.lease.json"), host="another-node", pid=1)  # alive elsewhere: refused
    with pytest.raises(RunLeaseError, match="pid 1 on another-node"):
        RunLease(run_dir).acquire()


def test_the_lease_is_renewed_while_held(tmp_path, monkeypatch):
    monkeypatch.setattr(lease_mod, "RENEW_S", 0.05)
    held = RunLease(str(tmp_path / "run"))
    held.acquire()
    first = held.holder()["renewed"]
    time.sleep(0.5)
    assert held.holder()["renewed"] > first
    held.release()


def test_distill_refuses_a_run_held_by_a_live_driver_before_starting_anything(tmp_path, smoke_job, write_job, capsys):
    runs = tmp_path / "runs"
    job = write_job(smoke_job({"storage": {"path": str(runs)},
                               "tracking": {"mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}}))
    _hold(str(runs / "smoke-tiny" / "driver.lease.json"), pid=subprocess.os.getpid())  # this very process: alive
    assert main(["distill", str(job)]) == 2
    assert "held by another driver" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run was started (none left RUNNING)
