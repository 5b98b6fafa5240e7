"""The study's GAN recipes (docs/method.md, "Keeping the teacher's diversity"): each is the x0-error recipe plus the
GAN weight, its runs are recorded as using training images, and the report's final table says so. Nothing trains."""

import json
from pathlib import Path

from benchmarks.fashion import study
from benchmarks.fashion.study import uses_training_images
from benchmarks.fashion.study_recipes import BASE, RECIPES
from benchmarks.fashion.study_records import group_runs, load_runs
from benchmarks.fashion.study_tables import images_label
from loopfree.config import DistillConfig

BASELINE = "full-ttur5-guid2-1-x0err"
METRICS = {"fid": 150.0, "precision": 0.1, "recall": 0.1, "f1": 0.1, "density": 0.02, "coverage": 0.05, "alignment": 0.7}


def test_each_gan_recipe_is_the_baseline_plus_its_gan_weight():
    for w in ("0.003", "0.01", "0.03"):
        assert RECIPES[f"{BASELINE}-gan{w}"] == {**RECIPES[BASELINE], "gan_weight": float(w)}


def test_a_run_uses_training_images_when_its_recipe_or_the_run_it_starts_from_does(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "WORK", tmp_path)
    gan, plain = (DistillConfig(**{**BASE, **RECIPES[r]}) for r in (f"{BASELINE}-gan0.01", BASELINE))
    assert uses_training_images(gan, None) and not uses_training_images(plain, None)
    for name, used in (("gan-s0", True), ("old-s0", None)):  # a run.json written before the key existed
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.json").write_text(json.dumps({"recipe": name, **({"uses_training_images": used}
                                                                                 if used is not None else {})}))
    assert uses_training_images(plain, "gan-s0") and not uses_training_images(plain, "old-s0")


def test_the_final_table_marks_gan_rows_as_using_training_images(tmp_path: Path):
    for recipe, used in ((f"{BASELINE}-gan0.01", True), (BASELINE, False)):
        (tmp_path / f"{recipe}-s0.jsonl").write_text(json.dumps({"step": 600, **METRICS, "train_s": 1.0}) + "\n")
        (tmp_path / f"{recipe}-s0.test.json").write_text(json.dumps(
            {"recipe": recipe, "seed": 0, "steps": 600, "num_steps": 4, "mode": "tiue", "uses_training_images": used,
             "images": 1000, **METRICS}))
    groups = group_runs(load_runs(tmp_path), RECIPES, BASE)
    assert {g.name: images_label(g) for g in groups.values()} == {f"{BASELINE}-gan0.01": "yes", BASELINE: "no"}
