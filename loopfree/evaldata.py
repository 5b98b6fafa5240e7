"""Evaluation inputs from local files: prompt sets and reference images. Plain Python, no Ray.

Prompt sets are (id, prompt) pairs; the id names the generated image (`<id>.png`) so that a folder of
images made elsewhere can be paired with its prompts for the CLIP score.
- "coco": a COCO captions file (`captions_val2014.json`: {"annotations": [{"image_id", "id", "caption"}]});
  one caption per image (the one with the smallest annotation id), id = image_id. COCO-30K is 30,000
  of these drawn with a fixed seed (`select`).
- "parti": PartiPrompts TSV (column "Prompt"); id = row number from 0.
- "text": one prompt per line, blank lines skipped; id = line number from 0.
Reference images: a folder of image files (recursive), or an IDX file (MNIST / Fashion-MNIST layout,
optionally gzipped).
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

import numpy as np
import PIL.Image
import torch

PROMPT_FORMATS = ("coco", "parti", "text")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def read_prompts(path: str | Path, fmt: str) -> list[tuple[str, str]]:
    """(id, prompt) pairs of a prompt file, in file order."""
    path = Path(path)
    if fmt == "coco":
        annotations = json.loads(path.read_text()).get("annotations")
        if not isinstance(annotations, list):
            raise ValueError(f"{path}: a COCO captions file needs an 'annotations' list")
        first: dict[int, tuple[int, str]] = {}
        for a in annotations:
            key = (a.get("id", 0), str(a["caption"]).strip())
            if a["image_id"] not in first or key < first[a["image_id"]]:
                first[a["image_id"]] = key
        return [(str(image_id), first[image_id][1]) for image_id in sorted(first)]
    if fmt == "parti":
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows and "Prompt" not in rows[0]:
            raise ValueError(f"{path}: a PartiPrompts TSV needs a 'Prompt' column, found {sorted(rows[0])}")
        return [(str(i), r["Prompt"].strip()) for i, r in enumerate(rows) if (r["Prompt"] or "").strip()]
    if fmt == "text":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [(str(i), line.strip()) for i, line in enumerate(lines) if line.strip()]
    raise ValueError(f"prompt format must be one of {PROMPT_FORMATS}, got {fmt!r}")


def select(items: list, limit: int | None, seed: int) -> list:
    """A deterministic subset: all items when limit is None or large enough, else `limit` of them drawn
    with `seed` and kept in file order (so the subset does not depend on the order of drawing)."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def read_idx(path: str | Path, limit: int | None = None) -> torch.Tensor:
    """An IDX image file (magic 0x00000803: uint8, dims N, H, W; big-endian) -> uint8 (N, 1, H, W)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.read(4)
        if len(header) != 4 or header[:3] != b"\x00\x00\x08" or header[3] != 3:
            raise ValueError(f"{path}: not an IDX file of uint8 images (magic {header.hex()}, expected 00000803)")
        n, h, w = (int.from_bytes(f.read(4), "big") for _ in range(3))
        count = n if limit is None else min(n, limit)
        data = f.read(count * h * w)
    if len(data) != count * h * w:
        raise ValueError(f"{path}: truncated, expected {count} images of {h}x{w}")
    return torch.from_numpy(np.frombuffer(data, np.uint8).copy()).view(count, 1, h, w)


def list_images(folder: str | Path) -> list[Path]:
    """Image files below a folder, sorted by relative path (hidden files skipped)."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def load_image(path: str | Path) -> torch.Tensor:
    """An image file -> uint8 (3, H, W) RGB."""
    with PIL.Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
