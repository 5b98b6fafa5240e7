"""Image grids: where people would rather look than read numbers."""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont

CAPTION_LINES = 2
FONT_SIZE = 12


def image_grid(images: Sequence[PIL.Image.Image], cols: int | None = None, pad: int = 2,
               captions: Sequence[str] | None = None, min_size: int = 0) -> PIL.Image.Image:
    """Tile equally sized images row by row (cols defaults to a near-square layout) on a white canvas.

    min_size: images smaller than this are enlarged by a whole factor (nearest neighbour, so pixels stay
    pixels) until their shorter side reaches it. captions: one per image, written under it (two lines).
    """
    if not images:
        raise ValueError("images must hold at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    w, h = images[0].size
    if any(im.size != (w, h) for im in images):
        raise ValueError("all images in a grid must have the same size")
    scale = max(1, math.ceil(min_size / min(w, h)))
    w, h = w * scale, h * scale
    text_h = (FONT_SIZE + 3) * CAPTION_LINES + 2 if captions is not None else 0
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    cell_h = h + text_h
    grid = PIL.Image.new("RGB", (cols * w + (cols + 1) * pad, rows * cell_h + (rows + 1) * pad), "white")
    draw, font = PIL.ImageDraw.Draw(grid), PIL.ImageFont.load_default(size=FONT_SIZE)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        x, y = pad + c * (w + pad), pad + r * (cell_h + pad)
        grid.paste(im.convert("RGB").resize((w, h), PIL.Image.NEAREST), (x, y))
        for j, line in enumerate(_wrap(captions[i], w, font) if captions is not None else []):
            draw.text((x + 1, y + h + 2 + j * (FONT_SIZE + 3)), line, fill="black", font=font)
    return grid


def _wrap(text: str, width: int, font) -> list[str]:
    """Greedy word wrap to `width` pixels, at most CAPTION_LINES lines, the last one cut with an ellipsis."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if font.getlength(trial) <= width - 2 or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    lines.append(line)
    cut = len(lines) > CAPTION_LINES
    lines = lines[:CAPTION_LINES]
    for i, line in enumerate(lines):
        end = " ..." if cut and i == len(lines) - 1 else ""
        while font.getlength(line + end) > width - 2 and line:
            line, end = line[:-1], end or "..."  # a word wider than the cell: cut it
        lines[i] = line + end
    return lines


def png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) image in [0, 1] as PNG bytes (rounded to 8 bits, as the pipeline's PIL output)."""
    buf = io.BytesIO()
    PIL.Image.fromarray((image * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()
