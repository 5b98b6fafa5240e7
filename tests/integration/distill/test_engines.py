"""The DeepSpeed adapter with the DeepSpeed config a job file generates: under fp16, loss-scale overflows are
reported as overflows (with the loss scale), never as the non-finite losses that stop a job; checkpoints
resume without unpickling anything but tensors and DeepSpeed's allow-listed value classes."""

import pytest
import torch
from loopfree_platform.distill.job import deepspeed_config, load_job

from loopfree.config import DistillConfig

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def process_group(free_port):
    """One gloo process group on 127.0.0.1 for the module (DeepSpeed caches its groups: no re-initialising)."""
    import torch.distributed as dist

    with pytest.MonkeyPatch.context() as mp:
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0", "LOCAL_RANK": "0",
                           "WORLD_SIZE": "1"}.items():
            mp.setenv(key, value)
        dist.init_process_group("gloo", rank=0, world_size=1)
        yield
        dist.destroy_process_group()


@pytest.fixture
def make_engine(process_group, smoke_job, write_job, monkeypatch):
    """make_engine(precision, zero_stage) -> a one-process DeepSpeed engine over Linear(4, 1), built like the
    workers build theirs: the adapter, with the DeepSpeed config generated from a job file."""
    from deepspeed.accelerator import get_accelerator
    from loopfree_platform.distill.engines import DeepSpeedEngine

    # DeepSpeed's CPU accelerator refuses fp16 unless oneDNN has fp16 kernels (AVX512-FP16 or AMX CPUs). What
    # these tests check is the loss scaler and the adapter, whose fp16 arithmetic PyTorch runs on any CPU, so
    # on other CPUs (AVX2-only ones) the capability gate alone is opened.
    if not get_accelerator().is_fp16_supported():
        monkeypatch.setattr(get_accelerator(), "is_fp16_supported", lambda: True)

    def make(precision: str, zero_stage: int = 2):
        job = load_job(write_job(smoke_job({"deepspeed": {"precision": precision, "zero_stage": zero_stage},
                                            "scaling": {"num_workers": 1, "global_batch_size": 1, "use_gpu": True}})))
        torch.manual_seed(0)
        module = torch.nn.Linear(4, 1)
        return DeepSpeedEngine(module, list(module.parameters()), 1e-3, (0.9, 0.999), DistillConfig(),
                               deepspeed_config(job, grad_clip=1.0))
    return make


@pytest.fixture
def fp16_engine(make_engine):
    engine = make_engine("fp16")
    assert engine.engine.fp16_enabled() and engine._loss_scale() == {"loss_scale": 2.0 ** 16}
    return engine


def test_fp16_overflows_halve_the_loss_scale_and_are_not_counted_as_nonfinite(fp16_engine):
    # d(loss)/d(weight) = 100 per input, so the scaled gradient overflows fp16 (max 65504) until the scale is
    # at most 2^9. DeepSpeed's dynamic scaler (hysteresis 2) keeps 2^16 after the first overflow and halves it
    # after each further one: 8 overflows in a row, more than training.max_nonfinite_in_a_row (5), then a step.
    x = torch.full((1, 4), 100.0, dtype=torch.half)
    weight_before = fp16_engine.engine.module.weight.detach().float().clone()
    reports = []
    for _ in range(9):
        fp16_engine.backward(fp16_engine.engine(x).sum())
        reports.append(fp16_engine.step())
    assert [r["overflow"] for r in reports] == [1.0] * 8 + [0.0]
    assert all(r["skipped"] == 0.0 for r in reports)
    assert [r["loss_scale"] for r in reports] == [2.0 ** 16] + [2.0 ** (16 - i) for i in range(1, 8)] + [2.0 ** 9]
    assert torch.equal(fp16_engine.engine.module.weight.detach().float(), weight_before) is False  # step 9 applied


def test_a_nonfinite_loss_is_skipped_as_a_fault_not_an_overflow(fp16_engine):
    x = torch.ones((1, 4), dtype=torch.half)
    fp16_engine.backward(fp16_engine.engine(x).sum() * float("nan"))
    report = fp16_engine.step()
    assert report["skipped"] == 1.0 and report["overflow"] == 0.0 and report["loss_scale"] == 2.0 ** 16


def _train(engine, steps: int) -> None:
    x = torch.ones((1, 4), dtype=next(engine.engine.module.parameters()).dtype)
    for _ in range(steps):
        engine.backward(engine.engine(x).sum())
        engine.step()


@pytest.mark.parametrize("precision, zero_stage", [("fp16", 2), ("fp32", 2), ("fp32", 3)])
def test_a_checkpoint_resumes_weights_and_optimizer_without_unpickling_objects(make_engine, tmp_path, precision,
                                                                                zero_stage):
    saved = make_engine(precision, zero_stage)
    _train(saved, 3)
    saved.save(str(tmp_path / "ckpt"))
    with saved.gathered_parameters():
        weights = [p.detach().float().clone() for p in saved.engine.module.parameters()]
    resumed = make_engine(precision, zero_stage)
    resumed.load(str(tmp_path / "ckpt"))
    with resumed.gathered_parameters():
        assert all(torch.equal(a, p.detach().float()) for a, p in zip(weights, resumed.engine.module.parameters()))
    _train(saved, 1)  # the same next step from the saved and the resumed engine: optimizer state came back too
    _train(resumed, 1)
    with saved.gathered_parameters(), resumed.gathered_parameters():
        assert all(torch.equal(a.detach(), b.detach())
                   for a, b in zip(saved.engine.module.parameters(), resumed.engine.module.parameters()))


class _RunsCode:
    def __reduce__(self):
        import os

        return os.system, ("touch " + str(_RunsCode.marker),)


def test_a_planted_pickle_in_a_checkpoint_is_refused_not_run(make_engine, tmp_path):
    saved = make_engine("fp32")
    _train(saved, 1)
    saved.save(str(tmp_path / "ckpt"))
    states = next((tmp_path / "ckpt").rglob("mp_rank_00_model_states.pt"))
    _RunsCode.marker = tmp_path / "code-ran"
    torch.save({"module": _RunsCode()}, states)  # what someone with write access to the bucket could do
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        make_engine("fp32").load(str(tmp_path / "ckpt"))
    assert not _RunsCode.marker.exists()


def test_verify_accepts_a_whole_checkpoint_and_names_what_is_wrong_with_a_truncated_or_incomplete_one(make_engine,
                                                                                                     tmp_path):
    import pyarrow.fs as pafs
    from loopfree_platform.distill import checkpoint
    from safetensors.torch import save_file

    for step in (2, 4):
        d = tmp_path / "run" / f"checkpoint_{step:08d}"
        for name in ("student", "fake_score"):
            engine = make_engine("fp32")
            _train(engine, 1)
            engine.save(str(d / name))
        save_file({"0": torch.zeros(2)}, str(d / "ema.safetensors"))
        checkpoint.TrainState(step=step).save(d)
    latest = tmp_path / "run" / "checkpoint_00000004"
    assert checkpoint.verify(latest, rank=0) is None
    assert checkpoint.verify(latest, rank=1) == "student: no DeepSpeed partition of rank 1"  # its files never arrived
    shard = sorted((latest / "student" / "state").glob("*optim_states.pt"))[0]
    shard.write_bytes(shard.read_bytes()[:100])
    problem = checkpoint.verify(latest, rank=0)
    assert problem is not None and "Error" in problem, problem  # e.g. "RuntimeError: PytorchStreamReader failed ..."
    (latest / "state.json").write_text("{")
    assert "JSONDecodeError" in checkpoint.verify(latest, rank=0)
    assert checkpoint.candidates(str(latest), pafs.LocalFileSystem()) == [
        str(latest), str(tmp_path / "run" / "checkpoint_00000002")]
