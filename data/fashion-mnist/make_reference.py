"""Rebuild this folder's FID reference: Inception features of the shipped validation split.

    python data/fashion-mnist/make_reference.py      # about 3 CPU-minutes on 2 cores

Writes `train-val-inception.npz`: the bundled FID Inception network's pool features (1000 x 2048, stored as
float16 to halve the file) of the 1000 images of `train-val-images-idx3-ubyte.gz`, in file order, 28x28 as
stored, preprocessed as every reference is (`loopfree_platform.reference`), and `key`, the reference cache's
content key of those images, that Inception file and that preprocessing. A job names the file as
`evaluation.reference.stats` and skips computing the features (the mean and covariance are fitted from them
when it loads: `reference.load_stats`); `tests/loopfree_platform/test_reference_file.py` checks the key and
a few rows against the installed Inception, so a changed network or preprocessing fails a test.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
IMAGES = HERE / "train-val-images-idx3-ubyte.gz"
OUT = HERE / "train-val-inception.npz"


def main() -> None:
    from loopfree_platform.reference import ReferenceSection, reference_in_process, reference_items

    from loopfree.features import InceptionFeatures

    section = ReferenceSection(images=str(IMAGES))
    with tempfile.TemporaryDirectory() as cache:
        reference = reference_in_process(section, InceptionFeatures(batch_size=50), None, cache)
    _, key = reference_items(section, None)
    np.savez_compressed(OUT, features=reference.features.numpy().astype(np.float16), key=key)
    print(f"{OUT}: features {tuple(reference.features.shape)}, key {key}")


if __name__ == "__main__":
    main()
