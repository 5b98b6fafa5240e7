import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from loopfree_platform.distill.job import deepspeed_config, load_job
from loopfree_platform.jobfile import JobError, redact

ROOT = Path(__file__).resolve().parents[3]


def test_shipped_job_files_validate(monkeypatch):
    monkeypatch.chdir(ROOT)
    job = load_job("jobs/smoke.yaml")
    assert job.scaling.num_workers == 2 and job.deepspeed.zero_stage == 2 and job.model.preset == "tiny"
    # jobs/distill.yaml names S3 paths that only exist on a real cluster; its schema still validates
    from loopfree_platform.distill.job import DistillJob

    recipe = DistillJob.model_validate(yaml.safe_load((ROOT / "jobs" / "distill.yaml").read_text()))
    assert recipe.scaling.global_batch_size == 64 and recipe.scaling.batch_per_worker == 8
    assert recipe.deepspeed.zero_stage == 2 and recipe.storage.path.startswith("s3://")
    assert recipe.method.student_lr == 1e-6


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["scaling"].update(num_workers="two"), "scaling.num_workers"),
        (lambda d: d["scaling"].update(global_batch_size=3), "scaling.global_batch_size"),
        (lambda d: d["deepspeed"].update(zero_stage=4), "deepspeed.zero_stage"),
        (lambda d: d["deepspeed"].update(precision="fp8"), "deepspeed.precision"),
        (lambda d: d["storage"].update(path="gs://bucket/runs"), "storage.path"),
        (lambda d: d["storage"].update(path="s3:///runs"), "storage.path"),
        (lambda d: d["model"].update(preset=None, teacher_dir="/no/such/model"), "model.teacher_dir"),
        (lambda d: d["model"].update(teacher_dir="/x"), "model"),
        (lambda d: d["data"].update(paths=["/no/such/corpus.jsonl"]), "data.paths[0]"),
        (lambda d: d["data"].update(column=None), "data.column"),
        (lambda d: d["method"].update(lamda_kl=0.2), "method"),
        (lambda d: d["method"].update(kl_reduction="max"), "method"),
        (lambda d: d["training"].pop("max_steps"), "training.max_steps"),
        (lambda d: d["sampling"].update(seeds=[1]), "sampling"),
        (lambda d: d.update(name="bad name/.."), "name"),
        (lambda d: d.update(evaluation={"every_steps": 2, "seed": 2**32, "reference": {"stats": "s.npz"}}),
         "evaluation.seed"),  # would draw seed 0's noise
        (lambda d: d.update(evaluation={"every_steps": 2, "seed": 2**32 - 100, "reference": {"stats": "s.npz"}}),
         "evaluation.seed: images use seeds 4294967196 to 4294967395"),  # 200 images: the last 100 past 2**32 - 1
        (lambda d: d["sampling"].update(prompts=["a", "b"], seeds=[0, 2**32]),
         "sampling.seeds.1: Input should be less than or equal to 4294967295"),
        (lambda d: d.update(evaluation={"every_steps": 2, "num_images": 4, "reference": {"stats": "s.npz"}}),
         "evaluation.nearest_k (5) must be below evaluation.num_images (4)"),
    ],
)
def test_bad_job_files_name_the_key(tmp_path, smoke_job, write_job, edit, key):
    data = smoke_job()
    edit(data)
    with pytest.raises(JobError) as err:
        load_job(write_job(data))
    assert key in str(err.value) and str(tmp_path / "job.yaml") in str(err.value)


def test_yaml_is_loaded_safely(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(JobError, match="not valid YAML"):
        load_job(path)


def test_missing_and_non_mapping_files(tmp_path):
    with pytest.raises(JobError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(JobError, match="mapping"):
        load_job(tmp_path / "list.yaml")


def test_deepspeed_config_is_generated_from_the_job(smoke_job, write_job):
    job = load_job(write_job(smoke_job({"deepspeed": {"zero_stage": 3, "precision": "bf16"}})))
    ds = deepspeed_config(job, grad_clip=1.0)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"] and not ds["fp16"]["enabled"]
    assert ds["train_micro_batch_size_per_gpu"] * 2 == ds["train_batch_size"] == 4
    assert ds["gradient_clipping"] == 1.0


def test_redact_masks_secret_keys_at_any_depth_and_keeps_lookalikes_like_tokenizer():
    out = redact({"aws_secret_access_key": "abc", "api-token": "t", "tokenizer": "kept", "nested": [{"password": "p"}]})
    assert out == {"aws_secret_access_key": "***", "api-token": "***", "tokenizer": "kept", "nested": [{"password": "***"}]}


def test_cli_dry_run_and_bad_file_fail_before_any_cluster_work(smoke_job, write_job):
    ok = subprocess.run([sys.executable, "-m", "loopfree_platform.cli", "distill", "jobs/smoke.yaml", "--dry-run"],
                        cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "lambda_kl: 0.1" in ok.stdout and "global_batch_size: 4" in ok.stdout
    data = smoke_job({"scaling": {"global_batch_size": 3}})
    code = ("import sys; from loopfree_platform.cli import main; rc = main(['distill', sys.argv[1]]); "
            "print('ray loaded' if 'ray' in sys.modules else 'no ray'); sys.exit(rc)")
    bad = subprocess.run([sys.executable, "-c", code, str(write_job(data))], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "scaling.global_batch_size" in bad.stderr
    assert bad.stdout.strip() == "no ray"  # failed in the driver before Ray was even imported
