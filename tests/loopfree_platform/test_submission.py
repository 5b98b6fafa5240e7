"""A submitted job's rules, checked in-process: Ray runs a submitted job in `.../_ray_pkg_<hash>/`, a copy of
the upload that changes with every edit and is deleted with the upload (docs/cluster.md)."""

import pytest
from loopfree_platform.distill.job import load_job
from loopfree_platform.jobfile import JobError
from loopfree_platform.runtime import shipped_code_warning, submitted_upload
from loopfree_platform.submit import runtime_env, when_agent_ready


@pytest.fixture
def upload(tmp_path, monkeypatch):
    """The current directory made a Ray upload copy; returns it."""
    folder = tmp_path / "working_dir_files" / "_ray_pkg_0123abcd"
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return folder


def test_the_upload_copy_is_recognised_from_any_folder_below_it(upload, monkeypatch):
    (upload / "jobs").mkdir()
    monkeypatch.chdir(upload / "jobs")
    assert submitted_upload() == upload


def test_a_relative_storage_path_is_refused_in_a_submitted_job(upload, smoke_job, write_job):
    path = write_job(smoke_job({"storage": {"path": "runs"}}), folder=upload)
    with pytest.raises(JobError, match=r"storage.path: 'runs' is relative, and a submitted job runs in Ray's copy"):
        load_job(path)


def test_an_absolute_storage_path_or_s3_with_a_tracking_server_is_accepted(upload, smoke_job, write_job, tmp_path,
                                                                          monkeypatch):
    assert load_job(write_job(smoke_job({"storage": {"path": str(tmp_path / "shared")}}), folder=upload))
    s3 = smoke_job({"storage": {"path": "s3://bucket/runs"}})
    with pytest.raises(JobError, match="tracking.mlflow_uri: not set, and MLFLOW_TRACKING_URI is not set"):
        load_job(write_job(s3, folder=upload))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert load_job(write_job(s3, folder=upload))


def test_outside_a_submitted_job_a_relative_storage_path_is_fine(tmp_path, monkeypatch, smoke_job, write_job):
    monkeypatch.chdir(tmp_path)
    assert submitted_upload() is None
    assert load_job(write_job(smoke_job({"storage": {"path": "runs"}}))).storage.path == "runs"


def test_running_the_installed_platform_instead_of_the_uploaded_one_is_warned_about(upload):
    assert shipped_code_warning() is None  # the upload carries no platform/: nothing to compare
    (upload / "platform" / "loopfree_platform").mkdir(parents=True)
    warning = shipped_code_warning()  # this process imports the checkout's copy, not the upload's
    assert warning.startswith("warning: loopfree_platform runs from") and "py_modules" in warning


def test_a_submission_ships_the_platform_as_a_py_module(tmp_path):
    assert "py_modules" not in runtime_env(str(tmp_path))
    (tmp_path / "platform" / "loopfree_platform").mkdir(parents=True)
    env = runtime_env(str(tmp_path))
    assert env["py_modules"] == [str(tmp_path / "platform" / "loopfree_platform")] and env["working_dir"] == str(tmp_path)
    assert {".venv", "runs", "mlruns", ".git"} <= set(env["excludes"])


class Refusals:
    """A submit call refused with `error` `times` times, then answered with a submission id."""

    def __init__(self, error: str, times: int):
        self.error, self.times, self.calls = error, times, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise RuntimeError(self.error)
        return "raysubmit_1"


AGENT_500 = "Request failed with status code 500: No available agent to submit job, please try again later."


def test_a_submission_refused_for_a_missing_job_agent_is_retried_and_said_once(capsys):
    submit_job, waits = Refusals(AGENT_500, times=3), []
    assert when_agent_ready(submit_job, sleep=waits.append) == "raysubmit_1"
    assert submit_job.calls == 4 and waits == [1.0, 1.0, 1.0]
    assert capsys.readouterr().err.count("job agent is not ready yet") == 1


def test_other_refusals_are_raised_at_once_and_a_missing_agent_after_the_wait():
    other = Refusals("Request failed with status code 400: bad runtime_env", times=1)
    with pytest.raises(RuntimeError, match="bad runtime_env"):
        when_agent_ready(other, sleep=lambda s: None)
    assert other.calls == 1
    ticks = iter(range(100))  # the clock advances 1 s per reading: past a 3 s wait on the fourth refusal
    forever = Refusals(AGENT_500, times=100)
    with pytest.raises(RuntimeError, match="No available agent"):
        when_agent_ready(forever, wait_s=3, sleep=lambda s: None, clock=lambda: next(ticks))
    assert forever.calls == 4
