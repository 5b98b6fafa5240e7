"""The evaluation job: schema, reference cache, and one small end-to-end run on the tiny preset through the CLI."""

import csv
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import yaml
from loopfree_platform.cli import main
from loopfree_platform.evaluate.job import EvaluateJob, load_eval_job
from loopfree_platform.evaluate.stages import reference
from loopfree_platform.jobfile import JobError
from loopfree_platform.reference import reference_items

ROOT = Path(__file__).resolve().parents[3]
FASHION_TEST = str(ROOT / "data" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz")  # shipped subset: 1000 images


def minimal(**overrides) -> dict:
    job = {"name": "e", "systems": [{"name": "TiUE", "kind": "tiue", "preset": "tiny"}],
           "prompts": {"path": str(ROOT / "data" / "PartiPrompts.tsv"), "format": "parti"},
           "reference": {"images": FASHION_TEST}}
    job.update(overrides)
    return job


def test_shipped_job_files_validate(capsys):
    assert main(["evaluate", str(ROOT / "jobs" / "evaluate.yaml"), "--dry-run"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["name"] == "eval-tiny"
    job = load_eval_job(ROOT / "jobs" / "evaluate.yaml")
    assert [s.kind for s in job.systems] == ["tiue", "teacher"] and str(ROOT / job.reference.images) == FASHION_TEST
    recipe = EvaluateJob.model_validate(yaml.safe_load((ROOT / "jobs" / "evaluate_sd21_coco30k.yaml").read_text()))
    assert [s.kind for s in recipe.systems] == ["teacher", "diffusers", "tiue", "tiue", "images"]
    assert recipe.prompts.limit == 30000 and recipe.systems[0].num_inference_steps == 50


@pytest.mark.parametrize("change, message", [
    (dict(extra=1), "extra: Extra inputs are not permitted"),
    (dict(systems=[{"name": "G", "kind": "images"}]), "systems.0: Value error, kind images needs images_dir"),
    (dict(systems=[{"name": "a", "kind": "tiue", "preset": "tiny"}] * 2), "distinct names"),
    (dict(systems=[{"name": "a", "kind": "diffusers", "preset": "tiny"}]), "model_dir only"),
    (dict(reference={"images": FASHION_TEST, "stats": "x.npz"}), "exactly one of reference.images"),
    (dict(scaling={"dtype": "fp16"}), "fp16 needs scaling.use_gpu"),
    (dict(seed=2**32), "seed: Input should be less than or equal to 4294967295"),  # would repeat seed 0's images
    (dict(prompts={"path": "/nonexistent.tsv", "format": "parti"}), "prompts.path: '/nonexistent.tsv' does not exist"),
])
def test_bad_jobs_name_file_and_key(write_job, change, message):
    path = write_job(minimal(**change))
    with pytest.raises(JobError) as err:
        load_eval_job(path)
    assert str(path) in str(err.value) and message.replace("Value error, ", "") in str(err.value)


def test_a_seed_whose_last_images_pass_2_to_the_32_is_refused_before_ray_starts(write_job):
    from loopfree_platform.evaluate.driver import run_evaluate

    job = load_eval_job(write_job(minimal(seed=2**32 - 1, prompts={"path": str(ROOT / "data" / "PartiPrompts.tsv"),
                                                                     "format": "parti", "limit": 2})))
    with pytest.raises(JobError, match=r"seed: images use seeds 4294967295 to 4294967296, which must stay in \[0, 2\*\*32\)"):
        run_evaluate(job)  # image 1 would draw seed 0's noise; refused before MLflow or Ray is touched


def test_reference_cache_key_follows_content_and_selection(tmp_path):
    for i in range(4):
        PIL.Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"{i}.png")
    job = EvaluateJob.model_validate(minimal(reference={"images": str(tmp_path)}))
    items, key = reference_items(job.reference, job.metrics.inception_path)
    assert [it["id"] for it in items] == ["0", "1", "2", "3"]
    assert reference_items(job.reference, job.metrics.inception_path)[1] == key
    (tmp_path / "0.png").rename(tmp_path / "renamed.png")  # same content: same key
    assert reference_items(job.reference, job.metrics.inception_path)[1] == key
    limited = EvaluateJob.model_validate(minimal(reference={"images": str(tmp_path), "limit": 2}))
    assert reference_items(limited.reference, limited.metrics.inception_path)[1] != key
    PIL.Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "1.png")
    assert reference_items(job.reference, job.metrics.inception_path)[1] != key


def test_saved_reference_statistics(tmp_path):
    feats = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    np.savez(tmp_path / "ref.npz", mu=feats.mean(0), sigma=np.cov(feats, rowvar=False))
    ref = reference(EvaluateJob.model_validate(minimal(reference={"stats": str(tmp_path / "ref.npz")})))
    assert ref.features is None and torch.allclose(ref.stats.mu, torch.tensor(feats.mean(0)))


@pytest.mark.usefixtures("ray_local")
def test_evaluate_job_end_to_end(tmp_path, capsys, write_job):
    """Tiny TiUE against 12 real Fashion-MNIST images; then the TiUE images the job saved, read back as a folder
    system, must score exactly like the generated ones (the same uint8 images). The teacher and diffusers kinds
    share the generation stage and are tested without Ray (tests/loopfree/test_systems.py)."""
    out = tmp_path / "eval"
    saved = out / "e2e" / "images" / "TiUE"
    saved.mkdir(parents=True)  # exists for validation; the TiUE row fills it before the folder row runs
    data = minimal(name="e2e", systems=[
        {"name": "TiUE", "kind": "tiue", "preset": "tiny"},
        {"name": "folder", "kind": "images", "images_dir": str(saved), "steps": "1 enc + 4 dec"}])
    data.update(prompts={"path": str(ROOT / "data" / "PartiPrompts.tsv"), "format": "parti", "limit": 12},
                reference={"images": FASHION_TEST, "limit": 12}, scaling={"batch_size": 6, "cpus_per_worker": 2},
                output={"dir": str(out), "cache_dir": str(tmp_path / "cache")},
                tracking={"mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    assert main(["evaluate", str(write_job(data))]) == 0
    printed = capsys.readouterr()
    assert "CLIP score skipped" in printed.out and "| TiUE | 1 enc + 4 dec |" in printed.out
    assert len(list(saved.glob("*.png"))) == 12
    with (out / "e2e" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["TiUE", "folder"] and rows[0]["steps"] == rows[1]["steps"] == "1 enc + 4 dec"
    assert all(r["images"] == "12" and float(r["FID"]) > 0 and r["CLIP"] == "-" for r in rows)
    assert rows[1]["FID"] == rows[0]["FID"] and rows[1]["coverage"] == rows[0]["coverage"]
    # The reference statistics were cached; a second evaluation reads them without Ray work.
    job = EvaluateJob.model_validate(data).with_absolute_paths()
    assert len(list((tmp_path / "cache").glob("reference-*.npz"))) == 1
    assert reference(job).stats.count == 12 and "cached" in capsys.readouterr().out

    from mlflow.tracking import MlflowClient

    client = MlflowClient(data["tracking"]["mlflow_uri"])
    run = client.search_runs([client.get_experiment_by_name("loopfree-eval").experiment_id])[0]
    assert run.data.metrics["TiUE/fid"] == pytest.approx(float(rows[0]["FID"]), abs=0.01)
    assert {"TiUE/precision", "folder/coverage", "folder/images"} <= set(run.data.metrics)


def test_analyze_features_writes_csv_and_plot(tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("a t-shirt\na sneaker\n")
    assert main(["analyze-features", "--preset", "tiny", "--steps", "6", "--num-prompts", "3", "--out", str(tmp_path),
                 "--prompts", str(tmp_path / "prompts.txt")]) == 0
    with (tmp_path / "feature_similarity.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 3, 4, 5, 6] and all(-1 <= float(r["encoder_cosine"]) <= 1 for r in rows)
    with PIL.Image.open(tmp_path / "feature_similarity.png") as im:
        assert im.size[0] > 400
    assert "feature_similarity.png" in capsys.readouterr().out


def test_folder_images_of_different_sizes(tmp_path):
    from loopfree_platform.evaluate.stages import ExtractFeatures, load_files

    PIL.Image.new("RGB", (8, 6), (1, 2, 3)).save(tmp_path / "a.png")
    PIL.Image.new("L", (5, 5), 9).save(tmp_path / "b.png")
    batch = load_files({"id": np.array(["a", "b"]), "prompt": np.array(["", ""]),
                        "path": np.array([str(tmp_path / "a.png"), str(tmp_path / "b.png")])})
    assert batch["image"].dtype == object and batch["image"][1].shape == (5, 5, 3)
    shapes = []
    out = ExtractFeatures._apply(lambda x: shapes.append(tuple(x.shape)) or x.float().mean((2, 3)), batch["image"])
    assert shapes == [(1, 3, 6, 8), (1, 3, 5, 5)] and out.tolist() == [[1.0, 2.0, 3.0], [9.0, 9.0, 9.0]]


def test_an_unreachable_tracking_server_fails_the_evaluation_before_ray_starts(monkeypatch):
    from loopfree_platform.evaluate import driver
    from loopfree_platform.tracking import TrackingError

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started although MLflow does not answer")

    monkeypatch.setattr(driver, "ensure_ray", no_ray)
    job = EvaluateJob.model_validate(minimal(tracking={"mlflow_uri": "http://127.0.0.1:9/"}))  # nothing listens
    with pytest.raises(TrackingError, match="tracking.mlflow_uri: MLflow at http://127.0.0.1:9/ is not usable"):
        driver.run_evaluate(job)
