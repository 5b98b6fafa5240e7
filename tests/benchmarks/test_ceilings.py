"""The metric-ceiling script's VAE round trip (benchmarks/fashion/ceilings.py) is diffusers' own deterministic
reconstruction (decode of the posterior's mode, which for its diagonal Gaussian is the mean), clipped, whatever
the batch it is split into."""

import torch

from benchmarks.fashion.ceilings import vae_round_trip


def test_the_round_trip_is_the_vaes_deterministic_forward_clipped_in_any_batch_size(tiny_components):
    vae = tiny_components.vae  # the session's tiny model (conftest.py), read only
    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        reference = vae(images, sample_posterior=False).sample.clamp(-1, 1)  # diffusers' AutoencoderKL.forward
    for batch in (2, 5):
        assert torch.allclose(vae_round_trip(vae, images, batch=batch), reference, atol=1e-5)
