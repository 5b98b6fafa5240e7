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
    {"regression_pool": 3},  # does not divide the tiny preset's latent size
]


@pytest.fixture
def tiny():
    # one per case: the Distiller takes ownership of the components, and a configuration it refuses may already
    # have changed them (a LoRA adapter half added) when it raises
    return preset("tiny").build(seed=0)


@pytest.mark.parametrize("method", BAD_METHODS, ids=[str(m) for m in BAD_METHODS])
def test_a_method_the_distiller_refuses_fails_the_dry_run_naming_method(tiny, smoke_job, write_job, method):
    with pytest.raises(ValueError):
        Distiller(tiny, DistillConfig.from_dict(method))  # the premise: training would fail on the workers
    with pytest.raises(JobError, match="method"):
        load_job(write_job(smoke_job({"method": method})))


@pytest.mark.parametrize("method, line", [
    ({"lora_lr": 1e-3}, "method.lora_lr: was renamed: use method.fake_score_lr"),
    ({"lora_t_max": 900}, "method.lora_t_max: was renamed: use method.fake_score_t_max"),
    ({"lamda_kl": 0.2}, "method.lamda_kl: unknown key (did you mean lambda_kl?)"),
    ({"num_steps": "4"}, "method.num_steps: Input should be a valid integer"),
    ({"lora_target_modules": "to_q"}, "method.lora_target_modules: Input should be a list"),
    ({"num_steps": 0}, "method.num_steps: must be an integer >= 1, got 0"),
    ({"spacing": "custom", "timesteps": [999, 500]}, "method.timesteps: 2 listed but num_steps is 4; they must agree"),
    ({"num_steps": 2000}, "method.num_steps: num_steps (K) must be <= num_train_timesteps=1000"),
    ({"lora_target_modules": ["to_x"]}, "method.lora_target_modules: 'to_x' names no module"),
    ({"regression_pool": 3}, "method.regression_pool: 3 must divide the latent's size"),
    ({"regression_renoise": "flip"}, "method.regression_renoise: must be one of mirrored_z, fresh, got 'flip'"),
    ({"regression_renoise": "fresh"}, "method.regression_renoise: 'fresh' needs regression_finish_from"),
    ({"gan_weight": -0.01}, "method.gan_weight: must be a number >= 0, got -0.01"),
    ({"guidance_scale": float("nan")}, "method.guidance_scale: must be a number >= 0, got nan"),  # YAML .nan
    ({"student_lr": float("inf")}, "method.student_lr: must be a positive number, got inf"),  # YAML .inf
    ({"gan_weight": 0.01}, "method.gan_weight: DMD2's GAN term needs real training images"),  # study-only for now
    ({"divergence": "js"}, "method.divergence: an f-divergence other than reverse_kl needs the discriminator's real"),
    ({"divergence": "hellinger"}, "method.divergence: must be one of"),
])
def test_a_bad_method_key_is_named_by_its_dotted_path(smoke_job, write_job, method, line):
    with pytest.raises(JobError) as err:
        load_job(write_job(smoke_job({"method": method})))
    assert f"job.yaml: {line}" in str(err.value)


def test_the_loaded_method_is_the_typed_config_with_every_default(smoke_job, write_job):
    job = load_job(write_job(smoke_job({"method": {"guidance_scale": 2.0, "lora_target_modules": ["to_q"]}})))
    assert isinstance(job.method, DistillConfig) and job.method.lora_target_modules == ("to_q",)
    assert job.method.fake_cfg == 2.0 and job.resolved()["method"]["lora_target_modules"] == ["to_q"]
    assert job.resolved()["method"].keys() == DistillConfig().to_dict().keys()  # --dry-run prints every default
