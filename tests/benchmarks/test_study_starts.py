"""A recipe listed in STARTS (benchmarks/fashion/study_recipes.py) starts its student from the named run's export of
the same seed, not from the teacher's UNet, and keeps its own name: it is a K = 4 recipe, not a K transfer."""

import json

import torch
from safetensors.torch import load_file

from benchmarks.fashion import study
from loopfree.presets import load_components


def unet_weights(export) -> dict:
    return load_file(next((export / "unet").glob("*.safetensors")))


def test_a_started_recipe_begins_at_its_sources_student_under_its_own_name(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "WORK", tmp_path / "work")
    monkeypatch.setattr(study, "RECORDS", tmp_path / "records")
    reference = torch.randn(20, 2048, generator=torch.Generator().manual_seed(0))  # the metrics' values do not matter
    monkeypatch.setattr(study, "validation_reference", lambda inception: reference)
    monkeypatch.setitem(study.RECIPES, "paper-started", {})
    monkeypatch.setitem(study.STARTS, "paper-started", "paper@2")
    small = dict(eval_every=2, images=6, batch_size=2, test_images=0)
    study.run("paper", seed=3, steps=2, **small)  # the source: a student trained away from the teacher
    study.run("paper-started", seed=3, steps=0, **small)  # no update: its export is the student it starts from
    source, started = unet_weights(tmp_path / "work" / "paper@2-s3" / "export"), \
        unet_weights(tmp_path / "work" / "paper-started-s3" / "export")
    teacher = load_components(study.TEACHER).unet.state_dict()
    assert any(not torch.equal(source[k], teacher[k]) for k in source)  # two updates moved the source away
    assert source.keys() == started.keys() and all(torch.equal(source[k], started[k]) for k in source)
    run = json.loads((tmp_path / "work" / "paper-started-s3" / "run.json").read_text())
    assert run["recipe"] == "paper-started" and run["init_from"] == "paper@2-s3"
    assert (tmp_path / "records" / "paper-started-s3.jsonl").is_file()
