"""The shipped FID reference (data/fashion-mnist/train-val-inception.npz, made by make_reference.py) is what
the installed Inception network computes for the shipped validation images, so jobs that name it as
`evaluation.reference.stats` score against the reference they would have computed themselves."""

from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "data" / "fashion-mnist" / "train-val-images-idx3-ubyte.gz"
FEATURES = ROOT / "data" / "fashion-mnist" / "train-val-inception.npz"


def test_shipped_reference_is_keyed_by_these_images_this_inception_and_this_preprocessing():
    from loopfree_platform.reference import ReferenceSection, reference_items

    _, key = reference_items(ReferenceSection(images=str(IMAGES)), None)
    assert str(np.load(FEATURES)["key"]) == key  # a changed network, preprocessing version or image changes it


def test_shipped_reference_rows_match_features_computed_now(tmp_path):
    from loopfree_platform.reference import ReferenceSection, load_stats, reference_in_process, reference_items

    from loopfree.features import InceptionFeatures

    section = ReferenceSection(images=str(IMAGES), limit=4, seed=3)
    rows, _ = reference_items(section, None)
    computed = reference_in_process(section, InceptionFeatures(batch_size=4), None, str(tmp_path)).features  # (4, 2048)
    shipped = load_stats(str(FEATURES))
    assert shipped.features.dtype == torch.float32 and shipped.features.shape == (1000, 2048)
    assert shipped.stats.count == 1000 and torch.allclose(shipped.stats.mu, shipped.features.double().mean(0))
    picked = shipped.features[[int(r["id"]) for r in rows]]
    assert torch.allclose(picked, computed, atol=1e-2, rtol=1e-3)  # float16 storage: about 2e-3 at most
