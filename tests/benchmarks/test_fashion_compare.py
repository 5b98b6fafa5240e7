"""benchmarks/fashion/compare.py's cheap parts: the three student jobs share one budget, the systems and
prompts are the ones benchmarks/results/fashion.md names, and the target verdicts read the right rows. Nothing is trained."""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from benchmarks.fashion import compare
from benchmarks.fashion.compare_report import grid, targets
from benchmarks.fashion.teacher_fid import prompt_classes

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # the job files name repository-relative paths


def test_students_share_the_budget_and_differ_only_in_method(tmp_path):
    jobs = {name: compare.student_job(name, tmp_path, 40) for name in compare.STUDENTS}
    budgets = {(j.training.max_steps, j.scaling.global_batch_size, j.method.student_lr, j.method.fake_score,
                j.method.fake_score_updates) for j in jobs.values()}
    assert budgets == {(40, 8, 1e-4, "full", 5)}  # the quickstart's recipe (the study's best) for every student
    assert jobs["swiftbrush-1step"].method.mode == "one_step"
    assert [j.method.lambda_kl for j in jobs.values()] == [0.0, 0.1, 0.0]
    assert all(j.tracking.registered_model is None for j in jobs.values())


def test_prompts_cover_every_class_equally(tmp_path):
    classes = prompt_classes(compare.eval_prompts(tmp_path, 100).read_text().splitlines())
    assert classes.tolist() == [i % 10 for i in range(100)]


def test_targets_read_the_named_rows():
    t50, t4 = compare.teacher_name(50, 4.5), compare.teacher_name(4, 4.5)
    results = {t50: {"fid": 10.0}, t4: {"fid": 20.0, "time_ms": 100.0},
               "sb": {"recall": 0.5, "coverage": 0.5},
               "tiue": {"fid": 12.0, "recall": 0.6, "coverage": 0.4, "time_ms": 80.0}}
    lines = targets(results, "tiue", "sb", t50, t4)
    assert ["held" in lines[0], "held" in lines[1], "missed" in lines[2], "missed" in lines[3]] == [True] * 4
    assert all("n/a" in line for line in targets({}, "tiue", "sb", t50, t4))


def test_grid_is_small(tmp_path):
    for i in range(3):
        PIL.Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    out = PIL.Image.open(grid(tmp_path, [0, 1, 2], 2, tmp_path / "g.png"))
    assert out.size == (65, 65)
