"""The platform's teacher pairs (docs/method.md, "Keeping the teacher's diversity"): which prompts and seeds they
get, and a resumed run that asks for other pairs than it stored. Making them end to end is in
tests/integration/distill/test_distill.py."""

import json

import numpy as np
import pytest
import torch
from loopfree_platform import storage
from loopfree_platform.console import Progress
from loopfree_platform.distill.job import DistillJob
from loopfree_platform.distill.pairs import (
    PAIRS_FILE,
    SETTINGS_FILE,
    PairsError,
    TeacherSampler,
    pair_rows,
    prepare_teacher_pairs,
)

from loopfree.pairs import PAIR_SEED_OFFSET, TeacherPairs, make_refined_pairs, make_teacher_pairs, pair_seeds
from loopfree.pipeline import TiUEPipeline
from loopfree.presets import load_student_unet, preset

OFF = Progress("", enabled=False)


def test_pair_i_gets_prompt_i_of_the_first_epoch_cycling_and_pair_seed_i(ray_local):
    import ray.data

    # two epochs of three prompts, as prepare_corpus numbers them: positions 0-2 are the first epoch
    ordered = ray.data.from_items([{"position": i, "prompt": f"p{i % 3}" if i < 3 else f"e1-{i}", "epoch": i // 3}
                                   for i in reversed(range(6))])
    rows = pair_rows(ordered, unique=3, count=7)
    assert [r["prompt"] for r in rows] == ["p0", "p1", "p2", "p0", "p1", "p2", "p0"]
    assert [r["index"] for r in rows] == list(range(7))
    assert [r["seed"] - PAIR_SEED_OFFSET for r in rows] == list(range(7))
    assert [r["prompt"] for r in pair_rows(ordered, unique=3, count=2)] == ["p0", "p1"]


def _job(smoke_job, tmp_path, **method) -> DistillJob:
    return DistillJob.model_validate(smoke_job({"storage": {"path": str(tmp_path)}, "method": method}))


def _store(job: DistillJob, settings: dict, folder) -> None:
    TeacherPairs(torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8), torch.zeros(2, 77, dtype=torch.long)).save(folder / "p")
    storage.write_bytes(storage.join(job.run_dir(), PAIRS_FILE), (folder / "p").read_bytes())
    storage.write_bytes(storage.join(job.run_dir(), SETTINGS_FILE), json.dumps(settings).encode())


def test_a_resumed_run_reuses_its_pairs_and_refuses_settings_that_would_make_others(smoke_job, tmp_path, capsys):
    made = {"pairs": 2, "teacher_steps": 5, "guidance_scale": 4.5}
    same = _job(smoke_job, tmp_path, regression_weight=1.0, regression_pairs=2, regression_teacher_steps=5)
    _store(same, made, tmp_path)
    before = storage.read_bytes(storage.join(same.run_dir(), PAIRS_FILE))
    prepare_teacher_pairs(same, None, 0, OFF)  # no corpus needed: nothing is made
    assert "teacher pairs: reusing" in capsys.readouterr().out
    assert storage.read_bytes(storage.join(same.run_dir(), PAIRS_FILE)) == before
    for change in ({"regression_pairs": 3}, {"regression_teacher_steps": 50}, {"regression_guidance_scale": 2.0},
                   {"guidance_scale": 2.0},  # the pairs' guidance follows guidance_scale unless set
                   {"regression_finish_from": 481}, {"regression_finish_from": 481, "regression_renoise": "fresh"}):
        other = _job(smoke_job, tmp_path, **{"regression_weight": 1.0, "regression_pairs": 2,
                                             "regression_teacher_steps": 5, **change})
        with pytest.raises(PairsError, match="keep the run's settings, or use a new run name"):
            prepare_teacher_pairs(other, None, 0, OFF)


def test_a_resumed_refined_run_refuses_another_renoise_and_reuses_pairs_stored_before_the_key(smoke_job, tmp_path):
    refined = {"regression_weight": 1.0, "regression_pairs": 2, "regression_teacher_steps": 5,
               "regression_finish_from": 481}
    stored_before_the_key = {"pairs": 2, "teacher_steps": 5, "guidance_scale": 4.5, "finish_from": 481}
    _store(_job(smoke_job, tmp_path, **refined), stored_before_the_key, tmp_path)
    prepare_teacher_pairs(_job(smoke_job, tmp_path, **refined), None, 0, OFF)  # mirrored z, the default: reused
    with pytest.raises(PairsError, match="regression_renoise"):
        prepare_teacher_pairs(_job(smoke_job, tmp_path, **refined, regression_renoise="fresh"), None, 0, OFF)


def test_without_the_regression_loss_no_pairs_are_made(smoke_job, tmp_path):
    job = _job(smoke_job, tmp_path)
    prepare_teacher_pairs(job, None, 0, OFF)
    assert not storage.exists(storage.join(job.run_dir(), PAIRS_FILE))


def _sample(job: DistillJob, prompts: list[str], seeds: list[int]) -> dict:
    batch = {"index": np.arange(len(prompts)), "prompt": np.array(prompts), "seed": np.array(seeds)}
    return TeacherSampler(job)(batch)


def test_the_sampler_refines_the_initial_students_samples_from_student_dir_when_asked(smoke_job, tmp_path):
    prompts, seeds = ["a red sneaker", "a cat"], pair_seeds(0, 2)
    method = {"regression_weight": 1.0, "regression_teacher_steps": 4, "guidance_scale": 2.0}
    components = preset("tiny").build(seed=0)
    # a student other than the teacher, saved as an export's unet/ folder
    student_unet = preset("tiny").build(seed=1).unet
    student_unet.save_pretrained(tmp_path / "student" / "unet")
    job = DistillJob.model_validate(smoke_job({"storage": {"path": str(tmp_path)}, "model": {
        "preset": "tiny", "seed": 0, "student_dir": str(tmp_path / "student")},
        "method": {**method, "regression_finish_from": 600, "regression_renoise": "fresh"}}))
    out = _sample(job, prompts, seeds)
    teacher = TiUEPipeline.from_components(components)
    student = TiUEPipeline.for_method(components, job.method, load_student_unet(tmp_path / "student"))
    for pipe in (teacher, student):
        pipe.set_progress_bar_config(disable=True)
    expected = make_refined_pairs(student, teacher, prompts, seeds, 600, 4, 2.0, renoise="fresh")
    torch.testing.assert_close(torch.from_numpy(out["x0"]), expected.x0)
    mirrored = make_refined_pairs(student, teacher, prompts, seeds, 600, 4, 2.0)  # the default re-noise
    assert not torch.allclose(torch.from_numpy(out["x0"]), mirrored.x0, atol=1e-3)  # the job's re-noise was used
    plain = _sample(DistillJob.model_validate(smoke_job({"storage": {"path": str(tmp_path)}, "method": method})),
                    prompts, seeds)  # without the key: the teacher's own samples
    torch.testing.assert_close(torch.from_numpy(plain["x0"]), make_teacher_pairs(teacher, prompts, seeds, 4, 2.0).x0)
    assert not torch.allclose(torch.from_numpy(plain["x0"]), expected.x0, atol=1e-3)
