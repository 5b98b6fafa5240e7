"""The DeepSpeed adapter under fp16, with the DeepSpeed config the job file generates: loss-scale overflows are
reported as overflows (with the loss scale), never as the non-finite losses that stop a job."""

import pytest
import torch
from loopfree.config import DistillConfig
from loopfree_platform.distill.job import deepspeed_config, load_job

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
def fp16_engine(process_group, smoke_job, write_job):
    """A one-process DeepSpeed engine over Linear(4, 1), built like the workers build theirs: the adapter, with
    the DeepSpeed config generated from a job file that asks for fp16."""
    from loopfree_platform.distill.engines import DeepSpeedEngine

    job = load_job(write_job(smoke_job({"deepspeed": {"precision": "fp16", "zero_stage": 2},
                                        "scaling": {"num_workers": 1, "global_batch_size": 1, "use_gpu": True}})))
    ds_config = deepspeed_config(job, grad_clip=1.0)
    assert ds_config["fp16"] == {"enabled": True, "initial_scale_power": 16, "loss_scale_window": 1000}
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 1)
    return DeepSpeedEngine(module, list(module.parameters()), 1e-3, (0.9, 0.999), DistillConfig(), ds_config)


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
