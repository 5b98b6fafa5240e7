"""A sweep end to end on the tiny preset: Ray Tune trials, each a Ray Train run with evaluation during
training, one MLflow parent run with its children, and the summary table."""

from pathlib import Path

import PIL.Image
import pytest
from loopfree_platform.cli import main
from loopfree_platform.console import Progress
from loopfree_platform.distill.callbacks import read_metrics
from loopfree_platform.distill.sweep import load_sweep
from loopfree_platform.distill.sweep_driver import run_sweep
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(600)]


def test_sweep_runs_each_variant_as_a_child_run_and_writes_the_summary(tmp_path, smoke_job, write_job, capsys):
    reference = tmp_path / "reference"
    reference.mkdir()
    for i in range(6):
        PIL.Image.new("RGB", (16, 16), (40 * i, 10, 200 - 40 * i)).save(reference / f"{i}.png")
    corpus = tmp_path / "prompts.txt"  # 4 prompts, global batch 2: the runs are capped at 2 of their 50 steps
    corpus.write_text("a red sneaker\na grey pullover\na black bag\na white shirt\n")
    base = write_job(smoke_job({
        "data": {"paths": [str(corpus)], "format": "text", "column": None},
        "storage": {"path": str(tmp_path / "runs")}, "training": {"max_steps": 50, "log_every": 1},
        "checkpoint": {"every_steps": 2}, "sampling": {"every_steps": 100}, "scaling": {"num_workers": 1, "global_batch_size": 2},
        "tracking": {"mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "sweep-test"},
        "evaluation": {"every_steps": 2, "num_images": 4, "nearest_k": 2, "reference": {"images": str(reference)},
                       "cache_dir": str(tmp_path / "eval-cache")}}), name="base.yaml")
    sweep_file = write_job({"name": "tiny-sweep", "base": str(base), "seeds": [0], "max_concurrent": 2,
                            "variants": [{"name": "paper"}, {"name": "ttur2", "overrides": {"method.fake_score_updates": 2}}]},
                           name="sweep.yaml")
    assert main(["sweep", str(sweep_file), "--dry-run"]) == 0
    assert "tiny-sweep-ttur2-s0" in capsys.readouterr().out

    sweep, runs = load_sweep(sweep_file)
    with Progress("sweep", unit="step") as bar:
        result = run_sweep(sweep, runs, progress=bar)
        assert bar.bar.total == 4  # the capped steps of both runs, read from their job.resolved.yaml

    assert [(r["variant"], r["steps"]) for r in result.rows] == [("paper", 2), ("ttur2", 2)]
    assert all(r["final_fid"] > 0 and r["steps_per_s"] > 0 for r in result.rows)
    summary = Path(result.csv).read_text().splitlines()
    assert summary[0].startswith("variant,seed,steps,final_fid,best_fid") and len(summary) == 3
    for name in ("paper", "ttur2"):  # each variant ran its own job, with its own override
        resolved = (tmp_path / "runs" / f"tiny-sweep-{name}-s0" / "job.resolved.yaml").read_text()
        assert f"fake_score_updates: {2 if name == 'ttur2' else 1}" in resolved and "max_steps: 2\n" in resolved
        rows = read_metrics(str(tmp_path / "runs" / f"tiny-sweep-{name}-s0" / "metrics.jsonl"))
        assert [r["step"] for r in rows if "eval/fid" in r] == [0, 2]

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    parent = client.get_run(result.parent_run_id)
    assert parent.data.tags["loopfree.sweep"] == "tiny-sweep" and "eval/best_final_fid" in parent.data.metrics
    assert "summary.md" in [a.path for a in client.list_artifacts(result.parent_run_id)]
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.parent_run_id}'")
    assert sorted(c.info.run_name for c in children) == ["tiny-sweep-paper-s0", "tiny-sweep-ttur2-s0"]
    assert all("2 steps" in c.data.tags["mlflow.note.content"] for c in children)
    history = client.get_metric_history(children[0].info.run_id, "eval/fid")
    assert sorted(m.step for m in history) == [0, 2]
