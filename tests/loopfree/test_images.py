"""Image grids: tiling, enlargement of small images and captions, checked pixel by pixel."""

import numpy as np
import PIL.Image
import pytest

from loopfree.images import image_grid


def solid(value: int, size: int = 8) -> PIL.Image.Image:
    return PIL.Image.new("RGB", (size, size), (value, value, value))


def test_tiles_row_by_row_with_white_padding():
    grid = np.asarray(image_grid([solid(10), solid(20), solid(30)], cols=2, pad=2))
    assert grid.shape == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2, 3)
    assert grid[2, 2, 0] == 10 and grid[2, 12, 0] == 20 and grid[12, 2, 0] == 30 and grid[12, 12, 0] == 255
    assert (grid[0] == 255).all()  # the padding row


def test_small_images_are_enlarged_by_a_whole_factor_with_nearest_neighbour():
    im = PIL.Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("RGB")
    grid = np.asarray(image_grid([im], pad=0, min_size=128))
    assert grid.shape == (128, 128, 3)
    assert (grid[:64, :64] == 0).all() and (grid[:64, 64:] == 255).all() and (grid[64:, 64:] == 0).all()


def test_each_caption_is_written_under_its_own_image_only():
    grid = np.asarray(image_grid([solid(255, 32), solid(255, 32)], cols=2, pad=0, captions=["a bag", ""],
                                 min_size=64))
    band = grid[64:]  # below the (white) images
    assert band.shape[0] > 12
    assert (band[:, :64] < 128).any()  # text under the first image
    assert (band[:, 64:] == 255).all()  # no caption, nothing written


def test_a_long_caption_is_cut_to_the_cell_width():
    grid = image_grid([solid(255, 32)], pad=0, captions=["word " * 40], min_size=64)
    assert grid.width == 64  # the caption never widens the cell


def test_image_grid_refuses_no_images_a_caption_count_mismatch_and_mixed_sizes():
    with pytest.raises(ValueError, match="at least one image"):
        image_grid([])
    with pytest.raises(ValueError, match="1 captions for 2 images"):
        image_grid([solid(0), solid(0)], captions=["x"])
    with pytest.raises(ValueError, match="same size"):
        image_grid([solid(0, 8), solid(0, 9)])
