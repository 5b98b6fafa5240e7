"""Image grids: where people would rather look than read numbers."""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
import PIL.Image


def image_grid(images: Sequence[PIL.Image.Image], cols: int | None = None, pad: int = 2) -> PIL.Image.Image:
    """Tile equally sized images row by row (cols defaults to a near-square layout) on a white canvas."""
    if not images:
        raise ValueError("images must hold at least one image")
    w, h = images[0].size
    if any(im.size != (w, h) for im in images):
        raise ValueError("all images in a grid must have the same size")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    grid = PIL.Image.new("RGB", (cols * w + (cols + 1) * pad, rows * h + (rows + 1) * pad), "white")
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im.convert("RGB"), (pad + c * (w + pad), pad + r * (h + pad)))
    return grid


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) image in [0, 1] as PNG bytes (rounded to 8 bits, as the pipeline's PIL output)."""
    buf = io.BytesIO()
    PIL.Image.fromarray((image * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
