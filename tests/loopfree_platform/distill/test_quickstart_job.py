"""The README's main job (jobs/quickstart.yaml) validates and distils the committed Fashion-MNIST teacher.
Running it takes minutes (it is not run in CI); its wall time and grid are in models/fashion-teacher/README.md."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_quickstart_job_distils_this_teacher_with_tiue_and_kl(monkeypatch):
    from loopfree_platform.distill.job import load_job

    monkeypatch.chdir(ROOT)
    job = load_job("jobs/quickstart.yaml")
    method = job.method
    assert job.model.teacher_dir == "models/fashion-teacher" and method.mode == "tiue" and method.num_steps == 4
    assert method.lambda_kl > 0 and job.storage.path == "runs" and job.tracking.mlflow_uri is None


def test_quickstart_and_its_sweep_evaluate_on_the_validation_split_never_the_test_images(monkeypatch):
    """Choices made with the in-training evaluation (the quickstart's, `loopfree sweep`'s best_fid) must not see the
    test images the study reports on: the reference is the shipped validation split's features."""
    from loopfree_platform.distill.job import load_job
    from loopfree_platform.distill.sweep import load_sweep

    monkeypatch.chdir(ROOT)
    reference = load_job("jobs/quickstart.yaml").evaluation.reference
    assert reference.stats == "data/fashion-mnist/train-val-inception.npz" and reference.images is None
    _, trials = load_sweep("jobs/sweep_quickstart.yaml")
    assert trials and all(job.evaluation.reference == reference for _, _, job in trials)
