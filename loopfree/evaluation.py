"""Evaluation of a student while it trains: fixed prompts and seeds -> FID, PRDC and alignment.

Single-device and tracker-free like the rest of `loopfree/`: the caller (the platform's worker loop, or a
local study) decides when to evaluate, splits the images over processes with `EvalSet.shard` and logs
the numbers. Images go through uint8 (as a PNG would) before any feature, like the evaluation job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from loopfree.classifier import alignment, prompt_labels
from loopfree.features import FeatureExtractor, to_uint8
from loopfree.metrics import GaussianStats, frechet_distance, frechet_distance_from_stats, gaussian_stats, prdc


@dataclass(frozen=True)
class EvalSet:
    """Image i is generated from prompts[i] with seeds[i]: the same images at every evaluation."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]

    @classmethod
    def cycle(cls, prompts: Sequence[str], num_images: int, seed: int = 0) -> "EvalSet":
        """num_images prompts taken round-robin from `prompts`, seeds seed, seed + 1, ..."""
        if not prompts or num_images < 1:
            raise ValueError("an evaluation set needs at least one prompt and one image")
        return cls(tuple(prompts[i % len(prompts)] for i in range(num_images)), tuple(seed + i for i in range(num_images)))

    def shard(self, rank: int, world: int) -> list[int]:
        """The image indices process `rank` of `world` generates (every world-th image)."""
        return list(range(rank, len(self.prompts), world))


@torch.no_grad()
def generate_features(pipe, eval_set: EvalSet, indices: Sequence[int], inception: FeatureExtractor,
                      classifier=None, classes: Sequence[str] | None = None, clip=None,
                      batch_size: int = 50) -> dict[str, torch.Tensor]:
    """Generate images `indices` of the set with a TiUEPipeline. Returns their indices, Inception features
    (N, 2048) and, with a classifier, whether each shows its prompt's class (N,); with a CLIP embedder
    (`loopfree.features.ClipEmbedder`), the cosine of each image with its prompt (N,)."""
    out: dict[str, list[torch.Tensor]] = {"index": [], "inception": [], "aligned": [], "clip_cos": []}
    for start in range(0, len(indices), batch_size):
        part = list(indices[start:start + batch_size])
        prompts = [eval_set.prompts[i] for i in part]
        images = pipe(prompts, seeds=[eval_set.seeds[i] for i in part], batch_size=len(part),
                      output_type="np").images  # (n, H, W, 3) in [0, 1]
        images = to_uint8(images)  # (n, 3, H, W) uint8
        out["index"].append(torch.tensor(part, dtype=torch.long))
        out["inception"].append(inception(images))
        if classifier is not None:
            out["aligned"].append(alignment(classifier, images, prompt_labels(prompts, classes)))
        if clip is not None:
            out["clip_cos"].append(torch.nn.functional.cosine_similarity(clip(images), clip.text(prompts), dim=1))
    return {k: torch.cat(v) for k, v in out.items() if v}


def merge(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Shards from several processes -> one dict in image order."""
    order = torch.cat([p["index"] for p in parts]).argsort()
    return {k: torch.cat([p[k] for p in parts])[order] for k in parts[0]}


def metrics(generated: dict[str, torch.Tensor], reference_features: torch.Tensor | None,
            reference_stats: GaussianStats | None = None, nearest_k: int = 5) -> dict[str, float]:
    """FID against the reference (its features, or saved statistics alone), precision/recall/F1/density/
    coverage (features needed), classifier alignment and CLIP score where they were measured."""
    feats = generated["inception"]
    if reference_features is not None:
        out = {"fid": frechet_distance(reference_features, feats)}
        out.update(prdc(reference_features, feats, k=nearest_k))
    else:
        out = {"fid": frechet_distance_from_stats(reference_stats, gaussian_stats(feats))}
    if "aligned" in generated:
        out["alignment"] = float(generated["aligned"].float().mean())
    if "clip_cos" in generated:
        out["clip_score"] = float(generated["clip_cos"].double().mean())
    return out
