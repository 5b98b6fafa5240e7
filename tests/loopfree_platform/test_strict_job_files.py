"""Strict job files: a key written twice, at any depth of any job, sweep or base file, or named twice by
--set overrides or a sweep variant, is an error naming the key (and, in a file, both lines), never a silent
"last one wins" (docs/jobs.md)."""

from pathlib import Path

import pytest
import yaml
from loopfree_platform.cli import main
from loopfree_platform.distill.sweep import load_sweep
from loopfree_platform.jobfile import JobError, load_yaml

ROOT = Path(__file__).resolve().parents[2]


def line_of(text: str, start: str, occurrence: int) -> int:
    """The 1-based line number of the occurrence-th line (0: first) that starts with `start`."""
    return [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(start)][occurrence]


@pytest.mark.parametrize("command, shipped", [("distill", "smoke.yaml"), ("evaluate", "evaluate.yaml"),
                                              ("serve", "serve.yaml"), ("generate", "generate.yaml")])
def test_a_duplicated_section_exits_2_naming_the_key_and_both_lines(tmp_path, capsys, command, shipped):
    text = (ROOT / "jobs" / shipped).read_text()
    section = next(line.split(":")[0] for line in text.splitlines() if line.endswith(":") and line[:1].isalpha())
    path = tmp_path / shipped
    path.write_text(text + f"{section}:\n  surprise: 1\n")  # the second section would silently replace the first
    assert main([command, str(path), "--dry-run"]) == 2
    first, second = line_of(path.read_text(), f"{section}:", 0), line_of(path.read_text(), f"{section}:", 1)
    assert capsys.readouterr().err.splitlines() == [
        f"error: {path}: duplicate key {section!r} at line {second} (first at line {first})"]


@pytest.mark.parametrize("text, message", [
    ("method:\n  lora_rank: 4\n  num_steps: 4\n  lora_rank: 8\n", "duplicate key 'method.lora_rank' at line 4 (first at line 2)"),
    ("a: [{b: {c: 1}}, {b: {c: 1, c: 2}}]\n", "duplicate key 'a[1].b.c' at line 1 (first at line 1)"),
    ("on: 1\nyes: 2\n", "duplicate key 'True' at line 2 (first at line 1)"),  # YAML 1.1: both are the boolean true
])
def test_a_key_written_twice_at_any_depth_is_named_by_its_dotted_path(text, message):
    with pytest.raises(JobError) as err:
        load_yaml(text)
    assert str(err.value) == message


def test_merge_keys_and_aliases_are_not_duplicates_and_loading_stays_safe():
    assert load_yaml("d: &d {a: 1, b: 2}\ne:\n  <<: *d\n  a: 3\nf: *d\n") == {
        "d": {"a": 1, "b": 2}, "e": {"a": 3, "b": 2}, "f": {"a": 1, "b": 2}}
    with pytest.raises(yaml.YAMLError):
        load_yaml("name: !!python/object/apply:os.system ['echo pwned']\n")


def test_a_sweep_file_or_its_base_with_a_duplicated_key_is_named(tmp_path, write_job, smoke_job):
    base = write_job(smoke_job({"storage": {"path": str(tmp_path / "runs")}}), name="base.yaml")
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"name: s\nbase: {base}\nvariants:\n  - name: a\n"
                     "    overrides:\n      method.lora_rank: 4\n      method.lora_rank: 8\n")
    with pytest.raises(JobError) as err:
        load_sweep(sweep)
    assert str(err.value) == f"{sweep}: duplicate key 'variants[0].overrides.method.lora_rank' at line 7 (first at line 6)"
    sweep.write_text(f"name: s\nbase: {base}\nvariants: [{{name: a}}]\n")
    base.write_text(base.read_text() + "training:\n  max_steps: 2\n")
    first, second = line_of(base.read_text(), "training:", 0), line_of(base.read_text(), "training:", 1)
    with pytest.raises(JobError) as err:
        load_sweep(sweep)
    assert str(err.value) == f"{base}: duplicate key 'training' at line {second} (first at line {first})"


@pytest.mark.parametrize("overrides, message", [
    ({"method": {"lora_rank": 4}, "method.lora_rank": 8}, "method.lora_rank is named twice (also as method)"),
    ({"data.seed": 3}, "data.seed: the sweep sets data.seed itself"),
    ({"name": "x"}, "name: the sweep sets name itself"),
])
def test_a_sweep_variant_that_names_a_key_twice_is_refused(tmp_path, write_job, smoke_job, overrides, message):
    base = write_job(smoke_job({"storage": {"path": str(tmp_path / "runs")}}), name="base.yaml")
    sweep = write_job({"name": "s", "base": str(base), "variants": [{"name": "v", "overrides": overrides}]}, "sweep.yaml")
    with pytest.raises(JobError) as err:
        load_sweep(sweep)
    assert f"variant 'v': {message}" in str(err.value)


@pytest.mark.parametrize("sets, message", [
    (["training.max_steps=1", "training.max_steps=2"],
     "--set training.max_steps: named twice (also by --set training.max_steps)"),
    (["training.max_steps=1", "training={max_steps: 2}"], "--set training: named twice (also by --set training.max_steps)"),
    (["method.guidance_scale={a: 1, a: 2}"], "--set method.guidance_scale: duplicate key 'a' at line 1 (first at line 1)"),
])
def test_set_overrides_that_name_a_key_twice_exit_2_naming_it(capsys, sets, message):
    args = [arg for item in sets for arg in ("--set", item)]
    assert main(["distill", str(ROOT / "jobs" / "smoke.yaml"), "--dry-run", *args]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]


@pytest.mark.parametrize("command, shipped, key", [
    ("serve", "serve.yaml", "serving.autoscaling.target_ongoing_requests"),  # bounded below only: .inf passed
    ("serve", "serve.yaml", "console.every_s"),
    ("evaluate", "evaluate.yaml", "systems.0.guidance_scale"),
])
@pytest.mark.parametrize("value", [".nan", ".inf"])
def test_a_non_finite_number_in_any_job_exits_2_naming_the_key(capsys, command, shipped, key, value):
    if key.startswith("systems."):  # an item of a list: --set replaces the whole list
        overrides = ["--set", "systems=[{name: teacher, kind: teacher, guidance_scale: " + value + "}]"]
    else:
        overrides = ["--set", f"{key}={value}"]
    assert main([command, str(ROOT / "jobs" / shipped), "--dry-run", *overrides]) == 2
    assert f"{key}: Input should be a finite number" in capsys.readouterr().err
