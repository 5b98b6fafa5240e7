"""Fashion-MNIST (Debian package `dataset-fashion-mnist`) as 32x32 RGB images in [-1, 1] with captions.

The 28x28 grayscale images are zero-padded by 2 pixels on each side (background stays black, no
resampling blur) and repeated over 3 channels, because the SD code paths expect RGB images whose side
the VAE divides evenly. Captions come from the class names with several templates, so the text
encoder sees varied wording for one class; the empty prompt is the unconditional input of CFG.
"""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from loopfree.evaldata import read_idx

DATA_DIR = Path(os.environ.get("LOOPFREE_FASHION_DIR", "/usr/share/datasets/fashion-mnist"))
SHIPPED = Path(__file__).resolve().parents[2] / "data" / "fashion-mnist"  # subsets that ship with the project
# 1000 TRAINING images (data/fashion-mnist/README.md): the validation split that recipes, run lengths and
# guidance are chosen on; the shipped test subset is scored once per final row.
VALIDATION_IMAGES = SHIPPED / "train-val-images-idx3-ubyte.gz"
# 2000 other TRAINING images, outside the validation draw: the real images of DMD2's GAN term (docs/method.md).
GAN_IMAGES = SHIPPED / "train-gan-images-idx3-ubyte.gz"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
TEMPLATES = (
    "a photo of a {}", "a {}", "a black and white picture of a {}", "a picture of a {}",
    "a grayscale photo of a {}", "a small image of a {}", "a product photo of a {}", "a low resolution photo of a {}",
)


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def caption(label: int, template: int) -> str:
    """Template `template` for class `label`, with the article fixed ("an ankle boot")."""
    text = TEMPLATES[template].format(CLASSES[label])
    return text.replace(f"a {CLASSES[label]}", f"{article(CLASSES[label])} {CLASSES[label]}")


def all_captions() -> list[str]:
    """Every caption, class-major: index label * len(TEMPLATES) + template."""
    return [caption(c, t) for c in range(len(CLASSES)) for t in range(len(TEMPLATES))]


def random_captions(n: int, seed: int) -> list[str]:
    """n captions drawn with a fixed seed (prompt corpora and evaluation prompt sets)."""
    rng = random.Random(seed)
    return [caption(rng.randrange(len(CLASSES)), rng.randrange(len(TEMPLATES))) for _ in range(n)]


def read_labels(path: str | Path) -> torch.Tensor:
    """An IDX label file (magic 0x00000801: uint8, dim N) -> int64 (N,)."""
    with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as f:
        header = f.read(8)
        if header[:4] != b"\x00\x00\x08\x01":
            raise ValueError(f"{path}: not an IDX label file (magic {header[:4].hex()}, expected 00000801)")
        n = int.from_bytes(header[4:], "big")
        data = f.read(n)
    if len(data) != n:
        raise ValueError(f"{path}: truncated, expected {n} labels")
    return torch.from_numpy(np.frombuffer(data, np.uint8).astype(np.int64))


def load_split(split: str, limit: int | None = None, data_dir: Path = DATA_DIR) -> tuple[torch.Tensor, torch.Tensor]:
    """("train" | "test") -> images uint8 (N, 1, 28, 28), labels int64 (N,)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    if not (data_dir / f"{prefix}-images-idx3-ubyte.gz").is_file():  # the project ships only 1000 test images
        raise FileNotFoundError(f"Fashion-MNIST {split} split not found in {data_dir}: install Debian's "
                                "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set LOOPFREE_FASHION_DIR")
    images = read_idx(data_dir / f"{prefix}-images-idx3-ubyte.gz", limit)
    labels = read_labels(data_dir / f"{prefix}-labels-idx1-ubyte.gz")[: len(images)]
    return images, labels


def load_validation() -> torch.Tensor:
    """The shipped validation images, uint8 (1000, 1, 28, 28): no dataset package needed."""
    return read_idx(VALIDATION_IMAGES)


def load_gan_images() -> torch.Tensor:
    """The shipped GAN subset's images, uint8 (2000, 1, 28, 28): disjoint from the validation and test subsets."""
    return read_idx(GAN_IMAGES)


def to_model_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 1, 28, 28) -> float (N, 3, 32, 32) in [-1, 1], padded with black (-1)."""
    x = images.float() / 127.5 - 1
    return F.pad(x, (2, 2, 2, 2), value=-1.0).repeat(1, 3, 1, 1)
