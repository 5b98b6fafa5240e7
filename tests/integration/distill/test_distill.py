"""The distillation job end to end on real components: local Ray, DeepSpeed on CPU (gloo), S3 (moto).

Runs are shared through module-scoped fixtures so the whole file costs a handful of TorchTrainer runs. The
uninterrupted, single-worker and crashing runs also train with DMD's regression loss on teacher pairs
(docs/method.md, "Keeping the teacher's diversity"), made with Ray Data by the uninterrupted run's driver
and reused by the others as a resumed run reuses its own, so parity and exact resume hold with it.
"""

from pathlib import Path

import boto3
import PIL.Image
import pytest
import torch
from loopfree_platform import storage
from loopfree_platform.distill.callbacks import read_metrics
from loopfree_platform.distill.corpus import prepare_corpus
from loopfree_platform.distill.driver import run_distill
from loopfree_platform.distill.job import DistillJob
from loopfree_platform.distill.pairs import PAIRS_FILE, SETTINGS_FILE
from loopfree_platform.distill.steplog import read_steps
from loopfree_platform.distill.train import NonFiniteLossError

from loopfree.evaldata import load_image, read_idx
from loopfree.features import InceptionFeatures, to_uint8
from loopfree.metrics import frechet_distance
from loopfree.pairs import TeacherPairs, make_teacher_pairs, pair_seeds
from loopfree.pipeline import TiUEPipeline
from loopfree.presets import tiny
from tests.executions import attempts, ran_again, same_results
from tests.faults import FaultProxy

ROOT = Path(__file__).resolve().parents[3]
LOSSES = ("loss_vsd", "loss_kl", "loss_fake_score", "grad_norm_student", "loss_regression")
# cheap teacher pairs: 6 pairs of 5 DDIM steps (the tiny teacher), pulled towards at a weight the losses notice
REGRESSION = {"regression_weight": 1.0, "regression_pairs": 6, "regression_teacher_steps": 5}
EVAL_PROMPTS = ["a photo of a sneaker", "a photo of a bag", "a photo of a dress", "a photo of a coat"]
# Each test runs one to three TorchTrainer jobs.
pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.timeout(600)]


@pytest.fixture(scope="session")
def job(smoke_job):
    """job(folder, name, **sections) -> jobs/smoke.yaml with local storage under folder and the given sections merged in."""

    def make(folder, name, **sections) -> DistillJob:
        data = smoke_job({
            "storage": {"path": str(folder / "runs")},
            "method": {"kl_reduction": "mean"},  # "sum" is per-rank (paper parity), so only "mean" is layout-free
            "sampling": {"every_steps": 100},
            "tracking": {"enabled": False},  # MLflow has its own tests; here it would only cost time
            "name": name})
        for section, values in sections.items():
            data[section] = {**data.get(section, {}), **values} if isinstance(values, dict) else values
        return DistillJob.model_validate(data)

    return make


def share_pairs(source: DistillJob, target: DistillJob) -> None:
    """Put the source run's teacher pairs in the target's run folder before it starts: it would make the same
    ones (pair i depends only on the corpus, its seed, the teacher and the method; checked against the library
    below), and taking the resumed run's path instead spares starting the teacher actors again (~15 s)."""
    for name in (PAIRS_FILE, SETTINGS_FILE):
        storage.write_bytes(storage.join(target.run_dir(), name), storage.read_bytes(storage.join(source.run_dir(), name)))


def losses(j: DistillJob) -> dict[int, tuple]:
    rows = read_metrics(storage.join(j.run_dir(), "metrics.jsonl"))
    return {r["step"]: tuple(r[k] for k in LOSSES) for r in rows if r["step"] > 0}  # step 0: the initial evaluation only


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def uninterrupted(runs, job):
    """Also evaluates during training (steps 0, 3, 6): 6 images split over the 2 workers, against 8 real
    Fashion-MNIST images; the evaluation does not touch the training randomness (parity test below)."""
    reference = runs / "reference"
    reference.mkdir()
    for i, image in enumerate(read_idx(ROOT / "data" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz", limit=8)):
        PIL.Image.fromarray(image[0].numpy()).save(reference / f"{i}.png")
    evaluation = {"every_steps": 3, "num_images": 6, "prompts": EVAL_PROMPTS, "seed": 100,
                  "reference": {"images": str(reference)}, "cache_dir": str(runs / "eval-cache")}
    j = job(runs, "uninterrupted", training={"max_steps": 6, "log_every": 1}, checkpoint={"every_steps": 2},
            evaluation=evaluation, method=REGRESSION)
    return j, run_distill(j)


def test_evaluation_during_training_logs_eval_metrics_at_its_steps(uninterrupted, runs):
    j, result = uninterrupted
    rows = {r["step"]: r for r in read_metrics(storage.join(j.run_dir(), "metrics.jsonl"))}
    assert [s for s in sorted(rows) if "eval/fid" in rows[s]] == [0, 3, 6]
    for key in ("eval/precision", "eval/recall", "eval/coverage", "eval/density", "eval/seconds"):
        assert key in rows[6]
    # independent recomputation: the exported EMA student (= the student of step 6), the same prompts and
    # seeds, the library's Inception and FID (checked against scipy in tests/loopfree/test_metrics.py)
    pipe = TiUEPipeline.from_pretrained(result.export_dir)
    prompts = [EVAL_PROMPTS[i % len(EVAL_PROMPTS)] for i in range(6)]
    images = pipe(prompts, seeds=[100 + i for i in range(6)], output_type="np").images
    inception = InceptionFeatures()
    reference = torch.stack([load_image(p) for p in sorted((runs / "reference").glob("*.png"))])
    expected = frechet_distance(inception(reference), inception(to_uint8(images)))
    assert rows[6]["eval/fid"] == pytest.approx(expected, rel=1e-3)


def test_uninterrupted_run_checkpoints_and_exports(uninterrupted):
    j, result = uninterrupted
    assert result.steps == 6 and sorted(losses(j)) == [1, 2, 3, 4, 5, 6]
    checkpoints = sorted(p.name for p in Path(j.run_dir()).glob("checkpoint_0*"))
    assert checkpoints == ["checkpoint_00000004", "checkpoint_00000006"]  # num_to_keep = 2
    ckpt = Path(j.run_dir()) / checkpoints[-1]
    assert (ckpt / "state.json").exists() and (ckpt / "ema.safetensors").exists()
    assert len(list((ckpt / "student" / "state").glob("*optim_states.pt"))) == 2  # one ZeRO-2 shard per rank
    pipe = TiUEPipeline.from_pretrained(result.export_dir)
    assert pipe.config.timesteps == [751, 501, 251, 1]
    assert pipe(["a cat"], seeds=[0]).images[0].size == (64, 64)


def test_teacher_pairs_are_the_teachers_samples_for_the_corpus_prompts_and_train_the_student(uninterrupted):
    """The driver's pairs (Ray Data, 3 batches of 2 over 2 teacher actors) equal the library's pairs made here in
    one process: pair i is prompt i of the ordered corpus with pair seed i, the tiny teacher's 5-step sample."""
    j = uninterrupted[0]
    pairs = TeacherPairs.load(Path(j.run_dir()) / PAIRS_FILE)
    assert len(pairs) == 6
    d = j.data
    ordered, _ = prepare_corpus(d.paths, d.format, d.column, d.on_bad_record, d.epochs, d.seed)
    prompts = [r["prompt"] for r in sorted(ordered.take_all(), key=lambda r: r["position"])[:6]]
    pipe = TiUEPipeline.from_components(tiny().build(seed=j.model.seed))
    expected = make_teacher_pairs(pipe, prompts, pair_seeds(0, 6), 5, j.method.pair_cfg)
    torch.testing.assert_close(pairs.noise, expected.noise, rtol=0, atol=0)
    torch.testing.assert_close(pairs.input_ids, expected.input_ids, rtol=0, atol=0)
    torch.testing.assert_close(pairs.x0, expected.x0, rtol=1e-4, atol=1e-4)  # other batches, other float sums
    assert len({tuple(ids.tolist()) for ids in pairs.input_ids}) == 6  # six different prompts
    rows = [r for r in read_metrics(storage.join(j.run_dir(), "metrics.jsonl")) if r["step"] > 0]
    assert len(rows) == 6 and all(r["loss_regression"] > 0 for r in rows)


def test_parity_two_workers_equal_one_worker_with_the_global_batch_then_nonfinite_steps_in_a_row_stop_it(
        runs, uninterrupted, job):
    """One worker with the 2-worker run's global batch: steps 1-3 equal the 2-worker run's. The same run then goes
    on to two non-finite steps in a row (steps 4 and 5, loop indices 3 and 4, rank 0 poisoned), which stop it
    with an error naming the setting: one run for both, as each run costs a worker group's start-up."""
    single = job(runs, "single", training={"max_steps": 6, "inject_nonfinite_at": [3, 4], "max_nonfinite_in_a_row": 2},
                 checkpoint={"max_failures": 0}, scaling={"num_workers": 1, "global_batch_size": 4}, method=REGRESSION)
    share_pairs(uninterrupted[0], single)
    with pytest.raises(Exception, match="2 non-finite steps in a row at step 4") as err:
        run_distill(single)
    assert NonFiniteLossError.__name__ in str(err.value)
    two, one = losses(uninterrupted[0]), losses(single)
    for step in (1, 2, 3):
        assert one[step] == pytest.approx(two[step], rel=1e-4, abs=1e-6), step


# The crashed-worker run and the fallback run that goes on from its folder: the same run, so the same sections.
CRASHING = {"checkpoint": {"every_steps": 2}, "deepspeed": {"zero_stage": 3}, "method": REGRESSION}


@pytest.fixture(scope="module")
def crashed(runs, job, uninterrupted):
    """A ZeRO-3 run (sharded parameters, gathered EMA, per-rank model shards in the checkpoint) whose worker
    crashes after step 4 ran (loop index 3), before checkpoint 4: (job, result, its losses as it ended, its step
    executions as it ended). The fallback test below goes on from its folder."""
    crashing = job(runs, "crashing", training={"max_steps": 4, "fail_at_step": 3}, **CRASHING)
    share_pairs(uninterrupted[0], crashing)
    result = run_distill(crashing)
    return crashing, result, losses(crashing), read_steps(crashing.run_dir())


def test_crashed_worker_restarts_from_the_last_checkpoint(crashed, uninterrupted):
    crashing, result, got, executions = crashed
    reference = losses(uninterrupted[0])
    assert result.steps == 4 and sorted(got) == [1, 2, 3, 4]  # every step's result recorded once
    # every execution (never deduplicated): steps 1-4, then the restart from checkpoint 2, the last one
    # registered, runs steps 3 and 4 again, and only those, with the same results
    assert attempts(executions) == {0: (0, [1, 2, 3, 4]), 1: (2, [3, 4])}
    assert ran_again(executions) == [3, 4]
    same_results(executions)
    assert storage.exists(storage.join(crashing.run_dir(), "fault_injected"))
    assert TiUEPipeline.from_pretrained(result.export_dir).config.num_steps == 4
    for step in range(1, 5):
        assert got[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-7), step


def test_a_truncated_latest_checkpoint_falls_back_to_the_one_before(crashed, uninterrupted, job, runs, capfd):
    """The crashed run's latest checkpoint (step 4) loses half of a rank's optimizer shard, as an interrupted
    upload leaves it; the run resumed to step 6 falls back to checkpoint 2."""
    run_root = Path(crashed[0].run_dir())
    shard = sorted((run_root / "checkpoint_00000004" / "student" / "state").glob("*optim_states.pt"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    again = job(runs, "crashing", training={"max_steps": 6}, **CRASHING)
    pairs = run_root / PAIRS_FILE
    made = pairs.stat().st_mtime_ns, pairs.read_bytes()
    result = run_distill(again)
    assert result.steps == 6
    captured = capfd.readouterr()
    assert "checkpoint_00000004 is unusable" in captured.out + captured.err  # the workers' warning, via Ray's log
    assert (pairs.stat().st_mtime_ns, pairs.read_bytes()) == made  # the resumed run reuses its teacher pairs
    assert f"teacher pairs: reusing {pairs}" in captured.out
    resumed, reference = losses(again), losses(uninterrupted[0])
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]  # each step once in the run's metrics
    executions = read_steps(again.run_dir())  # the crashed run's two attempts, then this one from checkpoint 2
    assert attempts(executions)[2] == (2, [3, 4, 5, 6]) and ran_again(executions) == [3, 4]
    same_results(executions)
    for step in (3, 4, 5, 6):  # resumed from checkpoint 2: steps 3-6 exactly as in the uninterrupted run
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-7), step


def test_s3_smoke_job_with_bad_records_and_a_nan_step_through_an_endpoint_that_throttles_and_cuts(
        s3_endpoint, tmp_path, smoke_job):
    """The whole job on S3 (corpus, teacher, run folder, checkpoints, samples, export) through a proxy that
    spoils every 7th request, in turn answering 503 SlowDown and cutting the transfer half-way (a download's
    body, an upload's body): every layer (Ray Data's corpus reads, the teacher download, Ray Train's
    checkpoint uploads, the run folder's files) retries, the run completes and every object is whole."""
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    lines = [line.split("\t")[0] for line in (ROOT / "data" / "PartiPrompts.tsv").read_text().splitlines()[1:41]]
    s3.put_object(Bucket="loopfree-test", Key="corpus/smoke/prompts.txt", Body="\n".join(lines + ["", "  "]).encode())
    data = smoke_job({"name": "s3-smoke"})
    data["data"] = {"paths": ["s3://loopfree-test/corpus/smoke/prompts.txt"], "format": "text"}
    data["training"] = {"max_steps": 4, "inject_nonfinite_at": [1]}
    # the teacher comes from an S3 prefix in diffusers layout, as on a cluster
    TiUEPipeline.from_components(tiny().build(seed=0)).save_pretrained(tmp_path / "teacher")
    storage.upload_dir(tmp_path / "teacher", "s3://loopfree-test/models/tiny-teacher")
    data["model"] = {"teacher_dir": "s3://loopfree-test/models/tiny-teacher"}
    data["tracking"] = {"mlflow_uri": f"sqlite:///{tmp_path}/mlflow.db"}  # not the default ./runs of the repo
    with FaultProxy(s3_endpoint, every=7, mode=("503", "cut"), by_method=True) as proxy:
        data["storage"] = {"path": "s3://loopfree-test/runs", "endpoint_url": proxy.url}
        result = run_distill(DistillJob.model_validate(data))
    print(f"faults injected: {proxy.by_kind} in {proxy.per_method} requests")
    assert proxy.injected >= 10, (proxy.injected, proxy.requests)  # faults were met all along the run
    assert {"cut GET", "cut PUT", "503 GET", "503 PUT"} <= set(proxy.by_kind), proxy.by_kind
    assert result.corpus["empty"] == 2 and result.corpus["unique"] == len(set(lines))
    objects = s3.list_objects_v2(Bucket="loopfree-test", Prefix="runs/s3-smoke/")["Contents"]
    keys = [o["Key"] for o in objects]
    files = {c: {o["Key"].split(c)[1]: o["Size"] for o in objects if c in o["Key"] and not o["Key"].endswith("/")}
             for c in ("checkpoint_00000002/", "checkpoint_00000004/")}
    assert len(files["checkpoint_00000004/"]) >= 12
    assert files["checkpoint_00000002/"].keys() == files["checkpoint_00000004/"].keys()
    assert all(size > 0 for c in files.values() for size in c.values()), files  # no file left empty by a cut
    assert "runs/s3-smoke/samples/step_00000004.png" in keys and "runs/s3-smoke/job.resolved.yaml" in keys
    rows = read_metrics("s3://loopfree-test/runs/s3-smoke/metrics.jsonl")
    assert rows[-1]["skipped_total"] == 1 and [r["step"] for r in rows] == [1, 2, 3, 4]
    assert attempts(read_steps("s3://loopfree-test/runs/s3-smoke")) == {0: (0, [1, 2, 3, 4])}  # each ran once
    pipe = TiUEPipeline.from_pretrained(storage.download_dir(result.export_dir, tmp_path / "export"))
    assert len(pipe(["a cat", "a dog"], seeds=[0, 1]).images) == 2
    assert result.mlflow_run_id and result.model_version  # tracked, with S3 run storage
