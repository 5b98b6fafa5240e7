"""The recall-spread study's noised pipeline (benchmarks/fashion/recall_spread.py): noise per image seed, clipped."""

from types import SimpleNamespace

import numpy as np

from benchmarks.fashion.recall_spread import Noised


def flat_pipe(prompts, seeds, batch_size, output_type):
    """Images of 0.5 everywhere, (n, H, W, 3) in [0, 1] like a pipeline's numpy output."""
    return SimpleNamespace(images=np.full((len(prompts), 4, 4, 3), 0.5, dtype=np.float32))


def test_noise_is_drawn_per_image_seed_whatever_the_batch_and_stays_in_range():
    pair = Noised(flat_pipe, 0.2)(["a", "b"], seeds=[3, 4], batch_size=2, output_type="np").images
    alone = Noised(flat_pipe, 0.2)(["b"], seeds=[4], batch_size=1, output_type="np").images
    np.testing.assert_array_equal(pair[1], alone[0])  # image 4 is the same in a batch of two or alone
    expected = np.clip(0.5 + 0.2 * np.random.default_rng(3).standard_normal((4, 4, 3)), 0, 1)
    np.testing.assert_allclose(pair[0], expected, rtol=1e-6)
    loud = Noised(flat_pipe, 5.0)(["a"], seeds=[0], batch_size=1, output_type="np").images
    assert loud.min() == 0.0 and loud.max() == 1.0 and loud.dtype == np.float32


def test_zero_noise_leaves_the_images_unchanged():
    out = Noised(flat_pipe, 0.0)(["a"], seeds=[1], batch_size=1, output_type="np").images
    np.testing.assert_array_equal(out, np.full((1, 4, 4, 3), 0.5, dtype=np.float32))
