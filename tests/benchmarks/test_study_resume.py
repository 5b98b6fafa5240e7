"""A study run stopped midway goes on from its last evaluation's checkpoint and ends with the student an
uninterrupted run exports (benchmarks/fashion/study.py, study_checkpoint.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from benchmarks.fashion import study, study_checkpoint


class Stop(Exception):
    """Stands for the process being killed right after a checkpoint was written."""


def small_run(tmp_path, monkeypatch, folder: str, stop_after: int | None = None):
    monkeypatch.setattr(study, "WORK", tmp_path / folder / "work")
    monkeypatch.setattr(study, "RECORDS", tmp_path / folder / "records")
    # 20 reference features instead of the 1000 validation images' Inception pass: the metrics' values do not matter
    reference = torch.randn(20, 2048, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(study, "validation_reference", lambda inception: reference)
    save = study_checkpoint.save

    def save_then_stop(path, step, *args):
        save(path, step, *args)
        if step == stop_after:
            raise Stop

    monkeypatch.setattr(study_checkpoint, "save", save_then_stop)
    return lambda steps=4: study.run("paper", seed=3, steps=steps, eval_every=2, images=6, batch_size=2, test_images=0)


def unet_weights(tmp_path, folder: str) -> dict:
    export = tmp_path / folder / "work" / "paper@4-s3" / "export" / "unet"
    return load_file(next(export.glob("*.safetensors")))


def test_a_run_stopped_after_a_checkpoint_resumes_there_and_exports_the_uninterrupted_runs_student(tmp_path, monkeypatch):
    small_run(tmp_path, monkeypatch, "whole")()
    interrupted = small_run(tmp_path, monkeypatch, "stopped", stop_after=2)
    with pytest.raises(Stop):
        interrupted()
    work = tmp_path / "stopped" / "work" / "paper@4-s3"
    assert torch.load(work / study_checkpoint.NAME, weights_only=True)["step"] == 2 and not (work / "export").exists()
    small_run(tmp_path, monkeypatch, "stopped")()  # the same command again
    whole, resumed = unet_weights(tmp_path, "whole"), unet_weights(tmp_path, "stopped")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    rows = [json.loads(x) for x in (tmp_path / "stopped" / "records" / "paper@4-s3.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4]  # each evaluation once: none repeated, none lost
    assert not (work / study_checkpoint.NAME).exists()  # a finished run keeps its export and record, not the state


def test_resume_step_needs_the_checkpoints_evaluation_in_the_record():
    rows = [{"step": 0}, {"step": 500}, {"step": 1000}]
    assert study_checkpoint.resume_step(rows, {"step": 500}) == 500  # a later row (written, not checkpointed) is dropped
    assert study_checkpoint.resume_step(rows, None) == 0
    assert study_checkpoint.resume_step([{"step": 0}], {"step": 500}) == 0  # a record started over: so does the run


def test_a_run_of_zero_updates_the_initial_students_row_exports_without_a_checkpoint(tmp_path, monkeypatch):
    small_run(tmp_path, monkeypatch, "init")(steps=0)  # the study's `init` row is run this way
    work = tmp_path / "init" / "work" / "paper-s3"
    assert (work / "export" / "model_index.json").is_file() and not (work / study_checkpoint.NAME).exists()
    rows = (tmp_path / "init" / "records" / "paper-s3.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in rows] == [0]
