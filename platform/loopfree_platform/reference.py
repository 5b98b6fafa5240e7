"""The FID reference, shared by the evaluation job and the evaluation during distillation.

A reference is a folder of images, an IDX file (MNIST layout, .gz ok) or saved statistics (.npz with mu,
sigma and optionally the features, which PRDC needs; or the features alone, any float type, which the mean
and covariance are then fitted from). Features are cached under a key made of the content
of the images used, the Inception file and the preprocessing version, so a reference costs its features
once whichever product asks for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import Field, model_validator

from loopfree.evaldata import list_images, load_image, read_idx, select
from loopfree.features import FeatureExtractor, bundled_inception_path
from loopfree.metrics import GaussianStats, gaussian_stats
from loopfree_platform.jobfile import Section

# Part of the cache key: change it whenever the preprocessing changes, so old statistics are not reused.
FEATURE_VERSION = "inception-uint8-bilinear299-v1"


class ReferenceSection(Section):
    images: str | None = Field(None, description="a folder of images or an IDX file (MNIST layout, .gz ok)")
    stats: str | None = Field(None, description="saved statistics .npz (mu, sigma; features enable PRDC)")
    limit: int | None = Field(None, ge=2, description="use this many reference images, drawn with seed")
    seed: int = 0

    @model_validator(mode="after")
    def _one(self):
        if (self.images is None) == (self.stats is None):
            raise ValueError("set exactly one of reference.images and reference.stats")
        return self


@dataclass
class Reference:
    stats: GaussianStats
    features: torch.Tensor | None  # PRDC needs them; saved statistics may lack them


def reference_items(section: ReferenceSection, inception_path: str | None) -> tuple[list[dict], str]:
    """Rows of the selected reference images ({"id", "image"} for IDX, {"id", "path"} for a folder) and a hash
    of their content, the extractor and the preprocessing."""
    digest = hashlib.sha256(FEATURE_VERSION.encode())
    inception = Path(inception_path) if inception_path else bundled_inception_path()
    digest.update(hashlib.sha256(inception.read_bytes()).digest())
    path = Path(section.images)
    if path.is_file():  # an IDX file: small enough to read in one process (Fashion-MNIST test set: 8 MB)
        images = read_idx(path)
        keep = select(list(range(len(images))), section.limit, section.seed)
        chosen = images[keep].expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3)
        digest.update(np.asarray(chosen.shape).tobytes() + chosen.tobytes())
        return [{"id": str(i), "prompt": "", "image": im} for i, im in zip(keep, chosen)], digest.hexdigest()[:32]
    files = select(list_images(path), section.limit, section.seed)
    # Content, not names, dates or order (the statistics ignore order): a renamed copy hits the cache,
    # an edited image does not.
    for file_digest in sorted(hashlib.sha256(f.read_bytes()).digest() for f in files):
        digest.update(file_digest)
    return [{"id": f.stem, "prompt": "", "path": str(f)} for f in files], digest.hexdigest()[:32]


def load_stats(path: str) -> Reference:
    saved = np.load(path)
    features = torch.from_numpy(saved["features"]).float() if "features" in saved else None
    if "mu" not in saved and features is not None:  # features alone (a shipped reference): the fit takes a second
        return Reference(gaussian_stats(features), features)
    count = int(saved["count"]) if "count" in saved else (len(features) if features is not None else 0)
    return Reference(GaussianStats(torch.from_numpy(saved["mu"]), torch.from_numpy(saved["sigma"]), count), features)


def cache_path(cache_dir: str, digest: str) -> Path:
    return Path(cache_dir) / f"reference-{digest}.npz"


def save_features(cache: Path, features: torch.Tensor) -> Reference:
    stats = gaussian_stats(features)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{np.random.randint(1 << 30)}.tmp.npz")
    np.savez(tmp, mu=stats.mu.numpy(), sigma=stats.sigma.numpy(), features=features.numpy(), count=len(features))
    tmp.replace(cache)  # atomic: a concurrent reader never sees half a file
    return Reference(stats, features)


def reference_in_process(section: ReferenceSection, inception: FeatureExtractor, inception_path: str | None,
                         cache_dir: str, batch_size: int = 50) -> Reference:
    """The reference computed in this process (no Ray Data): what a training worker uses."""
    if section.stats:
        return load_stats(section.stats)
    items, digest = reference_items(section, inception_path)
    cache = cache_path(cache_dir, digest)
    if cache.is_file():
        return load_stats(str(cache))
    feats = []
    for start in range(0, len(items), batch_size):
        part = items[start:start + batch_size]
        images = [torch.from_numpy(r["image"]).permute(2, 0, 1) if "image" in r else load_image(r["path"]) for r in part]
        feats.append(inception(torch.stack(images)))
    return save_features(cache, torch.cat(feats))
