"""What k-NN recall rewards on the Fashion-MNIST teacher: a finished student's samples with pixel noise added,
and the teacher's 50-step sampler, on the VALIDATION reference (1000 training images; never the test split).

Recall counts the reference images that fall inside some generated image's k-NN ball, and each ball's radius is
that image's distance to its k-th nearest GENERATED neighbour (loopfree.metrics.prdc), so a few samples far from
the rest get wide balls; coverage uses the reference's own radii (Naeem et al., "Reliable Fidelity and Diversity
Metrics for Generative Models", ICML 2020). The rows say whether the teacher's higher recall comes from wider balls
(benchmarks/results/recall_spread.md: it does not):
    .venv/bin/python -m benchmarks.fashion.recall_spread full-ttur5-guid1-1-x0err@2000-s1 --noise 0 0.1 0.3 --teacher
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from benchmarks.fashion.study import CLASSIFIER, TEACHER, WORK, TeacherSampler, validation_reference, validation_set

IMAGES = 1000
SEED0 = 20_000  # seeds 20000..20999: none of the study's validation (10000..) or test (0..999) seeds


class Noised:
    """A pipeline whose images get Gaussian pixel noise of std `sigma` (images in [0, 1]), clipped, per image seed."""

    def __init__(self, pipe, sigma: float):
        self.pipe, self.sigma = pipe, sigma

    def __call__(self, prompts, seeds, batch_size, output_type):
        out = self.pipe(prompts, seeds=seeds, batch_size=batch_size, output_type=output_type)
        noise = np.stack([np.random.default_rng(s).standard_normal(out.images.shape[1:]) for s in seeds])
        out.images = np.clip(out.images + self.sigma * noise, 0.0, 1.0).astype(out.images.dtype)
        return out


def row(system: str, sampler, inception, classifier, classes, ref: torch.Tensor) -> dict:
    from loopfree.evaluation import generate_features, metrics
    from loopfree.metrics import knn_radii

    gen = generate_features(sampler, validation_set(IMAGES, SEED0), range(IMAGES), inception, classifier, classes)
    radius = float(knn_radii(gen["inception"], 5).mean())
    result = {"system": system, **metrics(gen, ref), "mean_generated_knn_radius": radius}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    from loopfree.classifier import load_classifier
    from loopfree.features import InceptionFeatures
    from loopfree.metrics import knn_radii
    from loopfree.pipeline import TiUEPipeline
    from loopfree.presets import load_components

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished study run with an export under runs/fashion-study/")
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.3])
    parser.add_argument("--teacher", action="store_true", help="also the teacher's 50-step sampler at guidance 4.5")
    args = parser.parse_args()
    inception = InceptionFeatures(batch_size=50)
    classifier, classes = load_classifier(CLASSIFIER)
    ref = validation_reference(inception)
    print(json.dumps({"mean_reference_knn_radius": float(knn_radii(ref, 5).mean())}), flush=True)
    student = TiUEPipeline.from_pretrained(WORK / args.run / "export")
    student.set_progress_bar_config(disable=True)
    for sigma in args.noise:
        row(f"{args.run} + noise {sigma:g}", Noised(student, sigma), inception, classifier, classes, ref)
    if args.teacher:
        teacher = TiUEPipeline.from_components(load_components(TEACHER))
        teacher.set_progress_bar_config(disable=True)
        row("teacher 50 steps cfg 4.5", TeacherSampler(teacher, 50, 4.5), inception, classifier, classes, ref)


if __name__ == "__main__":
    main()
