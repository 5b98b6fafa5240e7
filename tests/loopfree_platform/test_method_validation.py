"""Every method configuration the Distiller refuses is refused at job load (what --dry-run runs), before Ray
starts: each bad `method` below is first shown to make the Distiller raise on the tiny preset, then load_job."""

import pytest
from loopfree_platform.distill.job import load_job
from loopfree_platform.jobfile import JobError

from loopfree.config import DistillConfig
from loopfree.distiller import Distiller
from loopfree.presets import preset

BAD_METHODS = [
    {"num_steps": 2000},  # more steps than the teacher's 1000 training timesteps
    {"spacing": "custom", "timesteps": [1500, 10], "num_steps": 2},  # a timestep the schedule does not have
    {"spacing": "custom", "timesteps": [10, 500], "num_steps": 2},  # not decreasing
    {"spacing": "custom", "timesteps": [999, 500]},  # two timesteps, K = 4
    {"mode": "one_step", "timesteps": [1000]},
    {"lora_target_modules": ["to_x"]},  # no such module in the UNet
    {"lora_rank": 0},
]


@pytest.fixture(scope="module")
def tiny():
    return preset("tiny").build(seed=0)


@pytest.mark.parametrize("method", BAD_METHODS, ids=[str(m) for m in BAD_METHODS])
def test_a_method_the_distiller_refuses_fails_the_dry_run_naming_method(tiny, smoke_job, write_job, method):
    with pytest.raises(ValueError):
        Distiller(tiny, DistillConfig.from_dict(method))  # the premise: training would fail on the workers
    with pytest.raises(JobError, match="method"):
        load_job(write_job(smoke_job({"method": method})))
