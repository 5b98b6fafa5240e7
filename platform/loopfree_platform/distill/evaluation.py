"""Evaluation during distillation, inside the Ray Train workers (docs/evaluation.md).

Every rank generates its share of the evaluation images (image i on rank i mod world), so no rank idles
while another evaluates and none can time out waiting; features are gathered to rank 0, which computes
the metrics (`loopfree.evaluation`) and returns them as `eval/...` entries of that step's report. The
reference features are computed once by rank 0 and cached (`loopfree_platform.reference`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.distributed as dist

from loopfree.classifier import load_classifier
from loopfree.evaluation import EvalSet, generate_features, merge, metrics
from loopfree.features import ClipEmbedder, InceptionFeatures
from loopfree_platform.distill.job import DistillJob
from loopfree_platform.reference import Reference, reference_in_process


class TrainingEvaluator:
    def __init__(self, job: DistillJob, device: torch.device, rank: int, world: int):
        self.section, self.rank, self.world = job.evaluation, rank, world
        s = self.section
        prompts = s.prompts or (_read_lines(s.prompts_path) if s.prompts_path else job.sampling.prompts)
        self.eval_set = EvalSet.cycle(prompts, s.num_images, s.seed)
        self.inception = InceptionFeatures(s.inception_path, device=device, batch_size=s.batch_size)
        self.classifier, self.classes = load_classifier(s.classifier_dir) if s.classifier_dir else (None, None)
        self.clip = ClipEmbedder.from_dir(s.clip_dir, device) if s.clip_dir else None
        self.reference: Reference | None = None
        if rank == 0:
            self.reference = reference_in_process(s.reference, self.inception, s.inception_path, s.cache_dir, s.batch_size)

    def due(self, step: int, total_steps: int) -> bool:
        return step % self.section.every_steps == 0 or step == total_steps

    def __call__(self, pipe) -> dict[str, float]:
        """Metrics of this pipeline on rank 0 ({"eval/fid": ...}); {} on the other ranks."""
        t0 = time.perf_counter()
        part = generate_features(pipe, self.eval_set, self.eval_set.shard(self.rank, self.world), self.inception,
                                 self.classifier, self.classes, self.clip, self.section.batch_size)
        parts = [part]
        if dist.is_initialized() and self.world > 1:
            parts = [None] * self.world if self.rank == 0 else None
            dist.gather_object(part, parts, dst=0)
        if self.rank != 0:
            return {}
        values = metrics(merge(parts), self.reference.features, self.reference.stats, self.section.nearest_k)
        return {**{f"eval/{k}": v for k, v in values.items()}, "eval/seconds": time.perf_counter() - t0}


def _read_lines(path: str) -> list[str]:
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
