import numpy as np
import PIL.Image
import pytest
import torch

from loopfree.pipeline import TiUEPipeline
from loopfree.schedule import ddim_plan


@pytest.fixture(scope="module")
def pipe(tiny_components):
    return TiUEPipeline.from_components(tiny_components, num_steps=4, spacing="leading")


def test_images_seeds_and_types(pipe):
    out = pipe(["a cat", "a dog", "a boat"], seeds=[0, 1, 2], batch_size=2)
    assert out.seeds == [0, 1, 2]
    assert len(out.images) == 3 and all(isinstance(im, PIL.Image.Image) and im.size == (64, 64) for im in out.images)
    arr = pipe("a cat", seeds=0, output_type="np").images
    assert arr.shape == (1, 64, 64, 3) and 0 <= arr.min() and arr.max() <= 1
    lat = pipe("a cat", seeds=0, output_type="latent").images
    assert lat.shape == (1, 4, 8, 8)


def test_seed_zero_is_a_seed_and_batching_does_not_change_images(pipe):
    a = pipe(["a cat"], seeds=[0], output_type="latent").images
    b = pipe(["a dog", "a cat"], seeds=[7, 0], batch_size=2, output_type="latent").images
    torch.testing.assert_close(a[0], b[1], rtol=1e-4, atol=1e-5)
    c = pipe(["a cat"], seeds=[1], output_type="latent").images
    assert not torch.allclose(a, c)


def test_random_seeds_are_returned_and_reproduce(pipe):
    out = pipe(["a cat", "a cat"], output_type="latent")
    again = pipe(["a cat", "a cat"], seeds=out.seeds, output_type="latent")
    torch.testing.assert_close(out.images, again.images)


def test_pipeline_latent_is_the_closed_form(pipe, tiny_components):
    latent = pipe(["a cat"], seeds=[3], output_type="latent").images
    z = pipe.prepare_latents([3])
    text = pipe.encode_prompt(["a cat"])
    with torch.no_grad():
        expected, _ = pipe.student(z, text)
    torch.testing.assert_close(latent, expected)


@pytest.mark.parametrize("kwargs", [
    dict(num_steps=4, spacing="trailing"),
    dict(num_steps=3, spacing="custom", timesteps=[900, 600, 300]),
    dict(num_steps=1, mode="one_step"),
    dict(num_steps=1, mode="one_step", spacing="custom", timesteps=[501]),
])
def test_save_and_load_round_trip(tmp_path, tiny_components, kwargs):
    pipe = TiUEPipeline.from_components(tiny_components, **kwargs)
    pipe.save_pretrained(tmp_path)
    loaded = TiUEPipeline.from_pretrained(tmp_path)
    assert loaded.config.timesteps == pipe.config.timesteps and loaded.config.mode == pipe.config.mode
    assert loaded.config.num_steps == pipe.config.num_steps and loaded.config.spacing == pipe.config.spacing
    assert "timesteps" not in kwargs or list(loaded.config.timesteps) == kwargs["timesteps"]  # the 1-step map at 501
    a = pipe(["a shoe"], seeds=[5], output_type="np").images
    b = loaded(["a shoe"], seeds=[5], output_type="np").images
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_multistep_teacher_sampler_matches_manual_ddim_cfg(pipe, tiny_components):
    """sample_multistep is plain DDIM + CFG: check against a hand-written loop on the same components."""
    from diffusers import DDIMScheduler

    out = pipe.sample_multistep(["a cat"], num_inference_steps=3, guidance_scale=4.5, seeds=[2], output_type="latent").images
    s = DDIMScheduler.from_config(tiny_components.scheduler.config)
    s.set_timesteps(3)
    z, c, u = pipe.prepare_latents([2]), pipe.encode_prompt(["a cat"]), pipe.encode_prompt([""])
    with torch.no_grad():
        for t in s.timesteps:
            e_c = tiny_components.unet(z, t, encoder_hidden_states=c).sample
            e_u = tiny_components.unet(z, t, encoder_hidden_states=u).sample
            z = s.step(e_u + 4.5 * (e_c - e_u), t, z).prev_sample
    torch.testing.assert_close(out, z, rtol=1e-4, atol=1e-5)


def test_one_step_pipeline_matches_plan(tiny_components):
    pipe = TiUEPipeline.from_components(tiny_components, num_steps=1, mode="one_step")
    assert pipe.config.timesteps == [999]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: p([], seeds=[]), "prompt"),
        (lambda p: p([1, 2]), "prompt"),
        (lambda p: p(["a", "b"], seeds=[1]), "one seed per prompt"),
        (lambda p: p(["a"], seeds=[-1]), "seeds"),
        (lambda p: p(["a"], seeds=[1.5]), "seeds"),
        (lambda p: p(["a"], seeds=[2**32 + 1]), r"seeds must be integers in \[0, 2\*\*32\)"),  # would repeat seed 1
        (lambda p: p(["a"], output_type="jpg"), "output_type"),
        (lambda p: p(["a"], batch_size=0), "batch_size"),
        (lambda p: p.sample_multistep(["a"], num_inference_steps=0), "num_inference_steps"),
    ],
)
def test_bad_requests(pipe, call, match):
    with pytest.raises(ValueError, match=match):
        call(pipe)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(spacing="linspace"), "spacing"),
        (dict(num_steps=0), "num_steps"),
        (dict(spacing="custom"), "explicit timesteps"),
        (dict(num_steps=2, spacing="custom", timesteps=[100, 500]), "strictly decreasing"),
        (dict(num_steps=4, spacing="leading", timesteps=[999, 749, 499, 249]), "disagree"),
        (dict(mode="three_step"), "mode"),
    ],
)
def test_bad_configuration(tiny_components, kwargs, match):
    with pytest.raises(ValueError, match=match):
        TiUEPipeline.from_components(tiny_components, **kwargs)


def test_plan_matches_scheduler(pipe, tiny_components):
    assert pipe.plan == ddim_plan(tiny_components.scheduler.alphas_cumprod, 4, "leading")


@pytest.mark.parametrize("method, timesteps", [
    ({"num_steps": 2, "spacing": "custom", "timesteps": [900, 300]}, [900, 300]),
    ({"num_steps": 2, "spacing": "trailing"}, None),
    ({"mode": "one_step"}, None),
])
def test_the_exported_pipeline_runs_the_students_plan(method, timesteps):
    from loopfree.config import DistillConfig
    from loopfree.distiller import Distiller
    from loopfree.presets import tiny

    components = tiny().build(seed=0)  # the Distiller adds its adapter to this UNet
    distiller = Distiller(components, DistillConfig.from_dict(method))
    pipe = TiUEPipeline.from_distiller(distiller, components)
    assert pipe.plan.timesteps == distiller.student.plan.timesteps and pipe.config.mode == distiller.config.mode
    assert timesteps is None or pipe.config.timesteps == timesteps
    assert all(torch.equal(a, b) for a, b in zip(pipe.unet.state_dict().values(), distiller.export_unet().state_dict().values()))


def test_peak_memory_is_measured_on_cpu():
    from loopfree.memory import peak_gb, reset_peak

    reset_peak(torch.device("cpu"))
    assert 0 < peak_gb(torch.device("cpu")) < 1024
