"""The step-execution log: every execution kept, per attempt, on local and S3 storage (docs/reliability.md)."""

import pytest
from loopfree_platform import storage
from loopfree_platform.distill import steplog
from loopfree_platform.distill.steplog import StepLog, read_steps

from tests.executions import attempts, ran_again


@pytest.fixture(params=["local", "s3"])
def run_dir(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    request.getfixturevalue("s3_endpoint")  # moto on 127.0.0.1, AWS_ENDPOINT_URL set
    return f"s3://loopfree-test/steplog/{tmp_path.name}"


def test_attempts_append_and_a_step_run_again_keeps_both_executions(run_dir, monkeypatch):
    monkeypatch.setattr(steplog, "BLOCK", 3)  # blocks of 3 steps: several objects per attempt
    assert read_steps(run_dir) == []
    first = StepLog(run_dir, None, resumed_at=0)
    for step in range(1, 6):  # a crash after step 5
        first.append(step, loss_student=float(step))
    again = StepLog(run_dir, None, resumed_at=4)  # restarted from checkpoint 4
    for step in (5, 6):
        again.append(step, loss_student=float(step))
    rows = read_steps(run_dir)
    assert (first.attempt, again.attempt) == (0, 1)
    assert attempts(rows) == {0: (0, [1, 2, 3, 4, 5]), 1: (4, [5, 6])}
    assert ran_again(rows) == [5] and [r["loss_student"] for r in rows if r["step"] == 5] == [5.0, 5.0]
    names = sorted(u.rsplit("/", 1)[1] for u in storage.list_files(storage.join(run_dir, "steps")))
    assert names == ["attempt_0000_000000001.jsonl", "attempt_0000_000000004.jsonl", "attempt_0001_000000004.jsonl"]
    assert StepLog(run_dir, None, resumed_at=6).attempt == 2  # the next start: a third attempt
