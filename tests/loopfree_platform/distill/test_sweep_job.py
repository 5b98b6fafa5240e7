"""Sweep job files: expansion into validated distillation jobs, before any cluster work."""

import pytest
from loopfree_platform.distill.sweep import apply_overrides, load_sweep, summary_row, tables
from loopfree_platform.jobfile import JobError


@pytest.fixture
def sweep_file(write_job, smoke_job, tmp_path):
    def make(**sweep):
        base = write_job(smoke_job({"storage": {"path": str(tmp_path / "runs")}}), name="base.yaml")
        return write_job({"name": "s", "base": str(base), **sweep}, name="sweep.yaml")
    return make


def test_variants_grid_and_seeds_expand_into_named_validated_jobs(sweep_file):
    variants = [{"name": "paper"}, {"name": "ttur", "overrides": {"method.fake_score_updates": 5}}]
    sweep, runs = load_sweep(sweep_file(variants=variants, grid={"method.guidance_scale": [1.5, 3.0]}, seeds=[0, 7]))
    names = [job.name for _, _, job in runs]
    assert names == ["s-paper-s0", "s-paper-s7", "s-ttur-s0", "s-ttur-s7", "s-guidance_scale-1.5-s0", "s-guidance_scale-1.5-s7",
                     "s-guidance_scale-3.0-s0", "s-guidance_scale-3.0-s7"]
    by_name = {job.name: job for _, _, job in runs}
    assert by_name["s-ttur-s7"].method.fake_score_updates == 5 and by_name["s-ttur-s7"].data.seed == 7
    assert by_name["s-paper-s0"].method.fake_score_updates == 1
    assert by_name["s-guidance_scale-3.0-s0"].method.guidance_scale == 3.0
    assert all(job.tracking.registered_model is None for job in by_name.values())


def test_variants_without_a_grid_expand_to_exactly_those_variants(sweep_file):
    _, runs = load_sweep(sweep_file(variants=[{"name": "paper"}, {"name": "ttur"}]))
    assert [job.name for _, _, job in runs] == ["s-paper-s0", "s-ttur-s0"]


@pytest.mark.parametrize("sweep, message", [
    ({"variants": [{"name": "bad", "overrides": {"method.fake_scor": "full"}}]},
     r"variant 'bad' \(seed 0\): method.fake_scor: unknown key \(did you mean fake_score\?\)"),
    ({"variants": [{"name": "bad", "overrides": {"method.fake_score_updates": 0}}]}, "variant 'bad'.*updates"),
    ({"variants": [{"name": "x"}, {"name": "x"}]}, "distinct"),
    ({}, "variants, a grid, or both"),
    ({"variants": [{"name": "p"}], "colour": 1}, "colour"),
])
def test_bad_sweeps_name_the_variant_and_key(sweep_file, sweep, message):
    with pytest.raises(JobError, match=message):
        load_sweep(sweep_file(**sweep))


def test_missing_base_job_is_named(write_job):
    with pytest.raises(JobError, match="base: job file 'nope.yaml' does not exist"):
        load_sweep(write_job({"name": "s", "base": "nope.yaml", "variants": [{"name": "p"}]}))


def test_overrides_create_sections_and_refuse_to_descend_into_values():
    assert apply_overrides({"a": {"b": 1}}, {"a.c": 2, "d.e": 3}) == {"a": {"b": 1, "c": 2}, "d": {"e": 3}}
    with pytest.raises(ValueError, match="is not a section"):
        apply_overrides({"a": 1}, {"a.b": 2})


def test_summary_row_reads_final_and_best_eval_from_metrics(tmp_path, smoke_job):
    from loopfree_platform.distill.job import DistillJob

    job = DistillJob.model_validate(smoke_job({"storage": {"path": str(tmp_path)}, "name": "r"}))
    (tmp_path / "r").mkdir()
    rows = ['{"step": 0, "eval/fid": 50.0}', '{"step": 2, "samples_per_s": 8.0, "eval/fid": 40.0, "eval/recall": 0.2}',
            '{"step": 4, "samples_per_s": 6.0, "eval/fid": 45.0, "eval/recall": 0.3, "eval/alignment": 0.5}']
    (tmp_path / "r" / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    row = summary_row("v", 0, job)
    assert (row["final_fid"], row["best_fid"], row["best_step"], row["recall"], row["alignment"]) == (45.0, 40.0, 2, 0.3, 0.5)
    assert row["steps_per_s"] == pytest.approx(6.0 / 4) and row["steps"] == 4
    md, csv_text = tables([row])
    assert "| v | 0 | 4 | 45 | 40 |" in md and csv_text.splitlines()[1].startswith("v,0,4,45.0,40.0,2")
