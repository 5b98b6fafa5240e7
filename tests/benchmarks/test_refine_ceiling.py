"""The refine ceiling's sampler (benchmarks/fashion/refine_ceiling.py): a sample noised to a low timestep as diffusers
noises it, finished on the teacher's 50-step schedule, each image from its own seed alone."""

import numpy as np
import torch
from diffusers import DDIMScheduler

from benchmarks.fashion.refine_ceiling import NOISE_SEED0, Refined, finish_timesteps, noise_to
from loopfree.pipeline import TiUEPipeline


def test_noising_equals_diffusers_add_noise_with_the_noise_of_each_image_seed():
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    x0, seeds, t = torch.randn(2, 4, 8, 8), [5, 6], 281
    eps = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(NOISE_SEED0 + s)) for s in seeds])
    expected = scheduler.add_noise(x0, eps, torch.tensor([t, t]))
    torch.testing.assert_close(noise_to(x0, seeds, scheduler.alphas_cumprod[t]), expected)


def test_finishing_starts_at_the_50_step_schedules_first_timestep_at_or_below_t_max():
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading")
    assert finish_timesteps(scheduler, 299).tolist() == list(range(281, 0, -20))  # 281, 261, ..., 1: 15 steps
    assert finish_timesteps(scheduler, 499).tolist()[:2] == [481, 461]


def test_a_refined_image_depends_only_on_its_own_seed_and_differs_from_its_source(tiny_components):
    pipe = TiUEPipeline.from_components(tiny_components, num_steps=4)
    pipe.set_progress_bar_config(disable=True)
    refined = Refined(pipe, pipe, 299)
    pair = refined(["a red sneaker", "a black bag"], seeds=[3, 4], batch_size=2, output_type="np").images
    alone = refined(["a black bag"], seeds=[4], batch_size=1, output_type="np").images
    np.testing.assert_allclose(pair[1], alone[0], atol=1e-5)
    source = pipe(["a black bag"], seeds=[4], batch_size=1, output_type="np").images
    assert pair.shape == (2, *source.shape[1:]) and np.abs(alone - source).max() > 1e-3
